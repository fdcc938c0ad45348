//! The exit codes every sagashop binary uses (BSD sysexits), so that scripts and Kubernetes
//! can tell a bad command line from a missing broker from a bug.

/// A bad command line or setting.
pub const EX_USAGE: u8 = 64;
/// A service we need (Kafka, the Kubernetes API server, a port) is unavailable.
pub const EX_UNAVAILABLE: u8 = 69;
/// An internal error.
pub const EX_SOFTWARE: u8 = 70;
/// A file could not be written.
pub const EX_CANTCREAT: u8 = 73;
/// Writing the output failed.
pub const EX_IOERR: u8 = 74;
/// A temporary failure: running again may succeed (the operator lost its Lease).
pub const EX_TEMPFAIL: u8 = 75;
