"""The .sgl grammar, shipped as package data (sgl.lark)."""
