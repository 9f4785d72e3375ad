//! ironbake's VM harness: boots published images under QEMU with OVMF (filled by the boot-test work).
