"""Control: the ctl commands, their persisted state and audit trail (SPEC 4, 5, 8)."""
