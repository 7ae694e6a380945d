"""SA-V reading, segmenting and the Ray job that writes MA-V (reader -> matter actor -> writer)."""
