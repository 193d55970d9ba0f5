//! One module per CNI command. Each receives a validated `Request` and
//! returns the JSON to print on success (nothing for DEL, CHECK, STATUS, GC).

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use serde_json::Value;

use crate::{
    config::NetConf,
    error::CniError,
    ipam::{DiskStore, FamilyIpam},
    request::Request,
    result::version_json,
};

pub fn run(request: Request) -> Result<Option<Value>, CniError> {
    match request {
        Request::Version { version } => Ok(Some(version_json(version))),
        Request::Add { conf, attachment, netns, pod } => {
            add::add(&conf, &attachment, &netns, pod.as_ref()).map(|result| Some(result.to_json(conf.cni_version)))
        }
        Request::Del { conf, attachment } => del::del(&conf, &attachment).map(|()| None),
        Request::Check { conf, attachment, netns, prev } => {
            check::check(&conf, &attachment, &netns, &prev).map(|()| None)
        }
        Request::Status { conf } => status::status(&conf).map(|()| None),
        Request::Gc { conf, keep } => gc::gc(&conf, &keep).map(|()| None),
    }
}

/// The allocators of every configured family, over this network's on-disk
/// stores (ADD).
fn ipam(conf: &NetConf) -> Result<FamilyIpam<DiskStore>, CniError> {
    Ok(FamilyIpam::open(&conf.ipam_dir(), &conf.ranges)?)
}

/// `ipam`, with the stores of families the configuration dropped that
/// still hold reservations (DEL, GC).
fn ipam_all(conf: &NetConf) -> Result<FamilyIpam<DiskStore>, CniError> {
    Ok(FamilyIpam::open_all(&conf.ipam_dir(), &conf.ranges)?)
}
