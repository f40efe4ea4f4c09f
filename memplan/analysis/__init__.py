"""Analyses of the IR: functions that read a graph and never change it, shared by passes and backends."""
