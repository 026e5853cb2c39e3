"""The check catalog's modules, one per check group.

The framework that registers checks (`@check`, `fail`, `skip`, the catalog) lives in
`conformance.framework`; the code that runs inside probe interpreters lives in
`conformance.probes`. Each module here holds only the checks of its group: small functions that
read typed observations and decide.
"""
