"""The joint search: one plan across every unit kind under measured budgets.

``options`` (what a block can become), ``quality`` (each option's error after its repair),
``cost`` (measured decode time, KV bytes, parameters), ``library`` (the option table),
``solve`` (the exact 0/1 program, HiGHS through scipy), ``joint`` (solve, assemble, re-measure,
correct) and ``frontier`` (one table, many budgets). It sits above the families and composes
their units; they do not know about it.
"""
