//! The network edge every listener shares: one accept loop with connection caps (`accept`), caps fitted
//! under the open-file limit (`budget`), HTTP/1 connections served with read timeouts (`http`), and the
//! wake-up gate sessions wait behind (`gate`).

pub mod accept;
pub mod budget;
pub mod gate;
pub mod http;
