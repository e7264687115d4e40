//! Synthetic producers and reports.
