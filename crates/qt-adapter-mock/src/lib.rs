//! In-memory and file-fed queue adapter for qt, with a test handle.
