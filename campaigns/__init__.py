"""Outbound reminder campaigns: coming in a later issue."""
