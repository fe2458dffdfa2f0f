"""Admission control: sliding-window limits checked and consumed in one Lua round trip."""
