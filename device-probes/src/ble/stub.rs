//! Stand-in for the BLE source when the `ble` feature is off.

use tokio::sync::watch;

use super::{BleConfig, BleError};
use crate::merger::Emitter;

/// Always fails: BLE support was not built in.
pub async fn run(
    _cfg: BleConfig,
    _emitter: Emitter,
    _shutdown: watch::Receiver<bool>,
) -> Result<(), BleError> {
    Err(BleError::NotBuilt)
}
