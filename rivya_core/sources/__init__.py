"""Importers from a product's own production database into the data contract.

Each source is read inside read-only transactions only (never a DDL or write statement
there) and written into a contract database that every page, the audit, the checklist,
backtest, calibrate and fork read unchanged. `facts` says which facts an imported
database's source recorded; `shipany` reads the ShipAny template's schema
(docs/shipany-schema.md), renamed by a mapping file (`mapping`).
"""
