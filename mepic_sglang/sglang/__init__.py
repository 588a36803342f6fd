"""The plugin's side of SGLang: the one subpackage that imports SGLang or touches its objects.

Everything SGLang-specific lives here (the hook table :mod:`.hooks`, the start-up check of every
SGLang name the plugin relies on :mod:`.compat` + :mod:`.seams`, and the hook functions by role);
the packages around it (the MEPIC core in :mod:`mepic_sglang`, :mod:`scheduler_patch`,
:mod:`disagg`) are plain Python that an SGLang upgrade does not touch. See ``README.md`` here.
"""
