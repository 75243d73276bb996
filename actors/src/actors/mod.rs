//! The actor system: thin shells that own resources and do IO, around the pure modules.
//!
//! Supervision tree (see ARCHITECTURE.md):
//! ```text
//! Service
//! ├── MetricsActor        aggregates call and media figures
//! ├── media engine thread every call's RTP socket, one epoll loop (not an actor: see crate::media)
//! ├── EchoActor           the shared echo's owner (UDP 4000): restarts its workers in place
//! │   └── echo worker*    one thread and SO_REUSEPORT socket each (see crate::shared_echo)
//! ├── Supervisor          one per service
//! │   ├── PortManager     the port pool's only owner
//! │   └── ChannelActor*   one per call
//! └── AriConnection       the events WebSocket; feeds the Supervisor
//! ```
pub mod ari_conn;
pub mod call_io;
pub mod channel;
pub mod echo;
pub mod failure;
pub mod metrics;
pub mod port_manager;
pub mod service;
pub mod supervisor;

pub use service::{Service, ServiceConfig, StartError};
