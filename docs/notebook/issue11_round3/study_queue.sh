#!/usr/bin/env bash
# one data seed; training seeds in order, all four CASD variants per seed (round 3: reliability calibration)
d=$1
cd /tmp
for s in 1111 1112 1113 1114 1115; do
  PYTHONPATH=$CASD_SRC python -m casd.study --seeds $s --data-seeds $d --out $STUDY_OUT \
    --threads 1 --variants casd no_distill gaussian gaussian_no_distill >> study_q$d.log 2>&1
done
