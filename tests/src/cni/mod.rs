//! The CNI side of the test bed: conflists, typed results, and a runtime
//! that drives plugins the way containerd's libcni does.

pub mod conflist;
pub mod result;
pub mod runtime;

pub use conflist::{Conflist, PluginConf};
pub use result::{CniError, CniResult, codes};
pub use runtime::{Attachment, CniFailure, CniOutcome, CniRuntime, FailureKind};
