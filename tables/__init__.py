"""Prediction tables: their schema and place in the store (predictions), the filter language in
Python and JavaScript (query, query.js), and the `table` and `compare` commands (table, compare)."""
