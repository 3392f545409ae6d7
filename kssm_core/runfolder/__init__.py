"""The run folder as files: layout, event log writer and reader, history, legacy logs, the lock, atomic writes, system facts. Never imports torch."""
