"""Reading a database: what discovery finds, the keys and inserts that shape each column,
and the read block that asks for states and bounds."""
