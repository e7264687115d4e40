//! The Avro contract of dcpipe.
