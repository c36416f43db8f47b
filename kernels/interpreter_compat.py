"""One upstream fix to Triton's CPU interpreter, back-ported to the Triton versions that lack it.

The interpreter holds a kernel's runtime scalars (sizes such as ``K``) as 1-element numpy
arrays and gives them an ``__index__`` that calls ``int(array)``, so that ``range(K)`` works
inside an interpreted kernel. numpy 2.4 refuses ``int()`` of an array with ``ndim > 0``
("only 0-dimensional arrays can be converted to Python scalars"; deprecated since numpy
1.25), which breaks every kernel that loops over a runtime size. Triton fixed it upstream by
squeezing the array first (triton-lang/triton#9172, Jan 2026); Triton 3.8 and 3.9 have the
fix, Triton 3.6 (the GPU machines' version) does not.

``apply()`` installs the same one-line fix for Triton releases below 3.8 whose interpreter
has the patch hook it relies on (checked by signature; anything else is left alone). With
numpy 1.25 to 2.3 it also silences the interpreter's DeprecationWarning for the same
conversion. It is applied only when the interpreter is selected; compiled (CUDA) kernels
never touch numpy.
"""
from __future__ import annotations

import inspect

__all__ = ["apply", "needed"]

_FIRST_FIXED = (3, 8)  # first Triton release checked to carry triton-lang/triton#9172


def _version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def needed() -> bool:
    """True for the Triton releases whose interpreter lacks the fix."""
    import triton

    return _version(triton.__version__) < _FIRST_FIXED


def _index(self) -> int:
    # The upstream fix: squeeze the 1-element array to 0-d before int().
    return int(self.handle.data.squeeze())


def apply() -> bool:
    """Install the fix if needed (idempotent); return whether it is in place."""
    if not needed():
        return False
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_casd_compat", False):
        return True
    if list(inspect.signature(original).parameters) != ["tensor", "scope"]:
        return False  # an interpreter this fix was not written for: leave it untouched

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        # set_attr records the previous value and restores in reverse order, so the
        # interpreter's own teardown undoes both assignments.
        scope.set_attr(tensor, "__index__", _index)

    _patch_lang_tensor._casd_compat = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True
