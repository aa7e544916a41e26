"""The .flow language: its AST (`ast`), grammar (`grammar.lark`) and parser (`parser`)."""
