//! The client daemon: the member's side of the protocol and its drivers.
