"""Where a run computes: devices and precision (:mod:`.device`), memory (:mod:`.memory`), threads
(:mod:`.threads`) and processes (:mod:`.parallel`).  None of it changes what is computed beyond rounding."""
