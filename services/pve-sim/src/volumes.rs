//! Disk config values and volume names, following pve-storage's naming: on a `zfspool` storage
//! `vm-<vmid>-disk-<n>` (n = lowest free), templates' `base-<vmid>-disk-<n>`, linked clones
//! `base-<t>-disk-<n>/vm-<vmid>-disk-<m>`, cloud-init `vm-<vmid>-cloudinit`; on a `dir` storage
//! `<vmid>/vm-<vmid>-disk-<n>.<fmt>`.

/// What a disk config value refers to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DiskRef {
    /// An existing volume `storage:volname`.
    Volume {
        storage: String,
        volname: String,
        size: Option<u64>,
        cdrom: bool,
    },
    /// `STORAGE:SIZE_GiB`: allocate a new disk.
    Alloc { storage: String, gib: f64 },
    /// `STORAGE:cloudinit`: allocate the cloud-init drive.
    CloudInit { storage: String },
    /// `none`, `cdrom`, a host path or an ISO: nothing the VM owns.
    Other,
}

/// Whether `key` is a drive slot (or an `unusedN` reference).
pub(crate) fn is_disk_key(key: &str) -> bool {
    let Some((prefix, index)) = crate::schema::split_index(key) else {
        return false;
    };
    match prefix {
        "ide" => index <= 3,
        "sata" => index <= 5,
        "scsi" => index <= 30,
        "virtio" => index <= 15,
        "efidisk" | "tpmstate" => index == 0,
        "unused" => index <= 255,
        _ => false,
    }
}

/// Parses a drive value (`[file=]<volume>,size=..,media=..`); `None` when `key` is no drive.
pub(crate) fn parse_disk(key: &str, value: &str) -> Option<DiskRef> {
    if !is_disk_key(key) {
        return None;
    }
    let mut file = None;
    let mut size = None;
    let mut cdrom = false;
    for (i, part) in value.split(',').enumerate() {
        match part.split_once('=') {
            Some(("file" | "volume", v)) => file = Some(v),
            Some(("size", v)) => size = crate::schema::parse_size(v),
            Some(("media", v)) => cdrom = v == "cdrom",
            Some(_) => {}
            None if i == 0 => file = Some(part),
            None => {}
        }
    }
    let file = file?;
    let Some((storage, volname)) = file.split_once(':') else {
        return Some(DiskRef::Other);
    };
    if storage.is_empty() || storage.contains('/') || volname.starts_with("iso/") {
        return Some(DiskRef::Other);
    }
    if volname == "cloudinit" {
        return Some(DiskRef::CloudInit {
            storage: storage.to_owned(),
        });
    }
    if let Ok(gib) = volname.parse::<f64>()
        && gib.is_finite()
        && gib > 0.0
    {
        return Some(DiskRef::Alloc {
            storage: storage.to_owned(),
            gib,
        });
    }
    Some(DiskRef::Volume {
        storage: storage.to_owned(),
        volname: volname.to_owned(),
        size,
        cdrom: cdrom && !volname.contains("cloudinit"),
    })
}

/// Whether the volume name is a cloud-init drive.
pub(crate) fn is_cloudinit(volname: &str) -> bool {
    volname.ends_with("-cloudinit") || volname.contains("-cloudinit.")
}

/// The last component of a (possibly linked) volume name: `base-9000-disk-0/vm-101-disk-0`
/// -> `vm-101-disk-0`.
pub(crate) fn own_name(volname: &str) -> &str {
    volname.rsplit('/').next().unwrap_or(volname)
}

/// Proxmox's `format_size` for config `size=` values: the largest unit that divides evenly.
pub(crate) fn format_size(bytes: u64) -> String {
    let units = [
        (1u64 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (factor, unit) in units {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

/// Replaces (or appends) `size=` in a drive value.
pub(crate) fn with_size(value: &str, bytes: u64) -> String {
    let mut parts: Vec<String> = value
        .split(',')
        .filter(|p| !p.starts_with("size="))
        .map(str::to_owned)
        .collect();
    parts.push(format!("size={}", format_size(bytes)));
    parts.join(",")
}

/// Replaces the volume (first part or `file=`) of a drive value.
pub(crate) fn with_volume(value: &str, volid: &str) -> String {
    let mut replaced = false;
    let parts: Vec<String> = value
        .split(',')
        .enumerate()
        .map(|(i, p)| {
            if (i == 0 && !p.contains('=')) || p.starts_with("file=") || p.starts_with("volume=") {
                replaced = true;
                volid.to_owned()
            } else {
                p.to_owned()
            }
        })
        .collect();
    if replaced {
        parts.join(",")
    } else {
        format!("{volid},{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_values_parse() {
        assert_eq!(
            parse_disk("scsi0", "local-zfs:vm-101-disk-0,size=40G,discard=on"),
            Some(DiskRef::Volume {
                storage: "local-zfs".into(),
                volname: "vm-101-disk-0".into(),
                size: Some(40 << 30),
                cdrom: false
            })
        );
        assert_eq!(
            parse_disk("ide2", "local-zfs:cloudinit"),
            Some(DiskRef::CloudInit {
                storage: "local-zfs".into()
            })
        );
        assert_eq!(
            parse_disk("scsi1", "local-zfs:10"),
            Some(DiskRef::Alloc {
                storage: "local-zfs".into(),
                gib: 10.0
            })
        );
        assert_eq!(parse_disk("ide2", "none,media=cdrom"), Some(DiskRef::Other));
        assert_eq!(
            parse_disk("ide2", "local:iso/u.iso,media=cdrom"),
            Some(DiskRef::Other)
        );
        assert_eq!(parse_disk("net0", "virtio,bridge=vmbr0"), None);
        assert_eq!(parse_disk("scsi31", "local-zfs:1"), None);
    }

    #[test]
    fn sizes_and_rewrites() {
        assert_eq!(format_size(2252 << 20), "2252M");
        assert_eq!(format_size(50 << 30), "50G");
        assert_eq!(format_size(1536), "1536");
        assert_eq!(
            with_size("local-zfs:vm-1-disk-0,size=40G,ssd=1", 50 << 30),
            "local-zfs:vm-1-disk-0,ssd=1,size=50G"
        );
        assert_eq!(
            with_volume(
                "local-zfs:base-9000-disk-0,size=2252M",
                "local-zfs:vm-5-disk-0"
            ),
            "local-zfs:vm-5-disk-0,size=2252M"
        );
        assert_eq!(own_name("base-9000-disk-0/vm-101-disk-0"), "vm-101-disk-0");
    }
}
