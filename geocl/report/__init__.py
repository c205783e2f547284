"""Things people look at: maps, tables and plots."""
