//! Validator tests against the official dump (each Proxmox message, indexed names, property
//! strings, returns leniency) and against small synthetic trees for routing rules the dump does
//! not exercise. A missing schema fails these tests with the list of places searched.

#![allow(clippy::unwrap_used)]

use serde_json::{Map, Value, json};

use super::*;

fn real() -> ApiSchema {
    match ApiSchema::locate() {
        Ok((schema, _)) => schema,
        Err(e) => panic!("{e}"),
    }
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

const CLONE: &str = "/nodes/{node}/qemu/{vmid}/clone";
const CONFIG: &str = "/nodes/{node}/qemu/{vmid}/config";

fn config_error(schema: &ApiSchema, key: &str, value: Value) -> Option<String> {
    let mut p = params(json!({"node": "pve1", "vmid": "101"}));
    p.insert(key.to_owned(), value);
    schema
        .validate_params("POST", CONFIG, &p)
        .err()
        .map(|mut e| {
            e.remove(key)
                .unwrap_or_else(|| format!("other errors: {e:?}"))
        })
}

#[test]
fn every_pattern_in_the_dump_compiles() {
    let schema = real();
    let broken: Vec<&String> = schema
        .inner
        .patterns
        .keys()
        .filter(|p| compile_pattern(p).is_none())
        .collect();
    assert!(
        broken.is_empty(),
        "patterns Rust cannot compile: {broken:?}"
    );
    assert!(schema.inner.patterns.len() > 40);
}

#[test]
fn missing_unknown_type_and_boolean_messages() {
    let schema = real();
    let errors = schema
        .validate_params(
            "POST",
            CLONE,
            &params(json!({"node": "pve1", "vmid": "9000", "bogus": "1", "full": "true"})),
        )
        .unwrap_err();
    assert_eq!(
        errors["newid"],
        "property is missing and it is not optional"
    );
    assert_eq!(
        errors["bogus"],
        "property is not defined in schema and the schema does not allow additional properties"
    );
    assert_eq!(errors["full"], "type check ('boolean') failed - got 'true'");

    let errors = schema
        .validate_params(
            "POST",
            CLONE,
            &params(json!({"node": "pve1", "vmid": "abc", "newid": "101"})),
        )
        .unwrap_err();
    assert_eq!(errors["vmid"], "type check ('integer') failed - got 'abc'");
    assert_eq!(errors.len(), 1, "{errors:?}");

    // Booleans: 0/1 as form strings or numbers, and JSON true/false.
    for full in [json!("1"), json!("0"), json!(1), json!(true), json!(false)] {
        let p = params(json!({"node": "pve1", "vmid": 9000, "newid": 101, "full": full}));
        assert_eq!(schema.validate_params("POST", CLONE, &p), Ok(()), "{full}");
    }
    let p = params(json!({"node": "pve1", "vmid": 9000, "newid": 101.5}));
    assert_eq!(
        schema.validate_params("POST", CLONE, &p).unwrap_err()["newid"],
        "type check ('integer') failed - got '101.5'"
    );
}

#[test]
fn enum_pattern_length_range_and_format_messages() {
    let schema = real();
    let e = schema
        .validate_params(
            "POST",
            CLONE,
            &params(
                json!({"node": "pve1", "vmid": "9000", "newid": "99", "format": "vhd",
                "bwlimit": "-1", "snapname": "a".repeat(41), "name": "bad_name"}),
            ),
        )
        .unwrap_err();
    assert_eq!(
        e["format"],
        "value 'vhd' does not have a value in the enumeration 'raw, qcow2, vmdk'"
    );
    assert_eq!(
        e["newid"],
        "invalid format - value does not look like a valid VM ID\n"
    );
    assert_eq!(e["bwlimit"], "value must have a minimum value of 0");
    assert_eq!(e["snapname"], "value may only be 40 characters long");
    assert_eq!(
        e["name"],
        "invalid format - value does not look like a valid DNS name\n"
    );

    let resize = "/nodes/{node}/qemu/{vmid}/resize";
    let e = schema
        .validate_params(
            "PUT",
            resize,
            &params(json!({"node": "pve1", "vmid": "101", "disk": "scsi0", "size": "ten"})),
        )
        .unwrap_err();
    assert_eq!(e["size"], "value does not match the regex pattern");
    for ok in ["+10G", "50G", "1.5T", "1024"] {
        let p = params(json!({"node": "pve1", "vmid": "101", "disk": "scsi0", "size": ok}));
        assert_eq!(schema.validate_params("PUT", resize, &p), Ok(()), "{ok}");
    }

    assert_eq!(
        config_error(&schema, "background_delay", json!("31")).unwrap(),
        "value must have a maximum value of 30"
    );
    let e = schema
        .validate_params(
            "POST",
            "/nodes/{node}/qemu/{vmid}/agent/set-user-password",
            &params(json!({"node": "pve1", "vmid": "101", "username": "root", "password": "abc"})),
        )
        .unwrap_err();
    assert_eq!(e["password"], "value must be at least 5 characters long");
    assert_eq!(
        config_error(&schema, "delete", json!("net0,1bad")).unwrap(),
        "invalid format - invalid configuration ID '1bad'\n"
    );
}

#[test]
fn named_formats() {
    let schema = real();
    let snapshot = "/nodes/{node}/qemu/{vmid}/snapshot";
    let base = json!({"node": "pve1", "vmid": "101"});
    let snap = |name: &str| {
        let mut p = params(base.clone());
        p.insert("snapname".into(), json!(name));
        schema.validate_params("POST", snapshot, &p)
    };
    assert_eq!(snap("before-upgrade_1"), Ok(()));
    assert_eq!(snap("Pre"), Ok(()), "case-insensitive");
    assert_eq!(
        snap("1st").unwrap_err()["snapname"],
        "invalid format - invalid configuration ID '1st'\n"
    );
    let bad_node = schema
        .validate_params(
            "GET",
            "/nodes/{node}/status",
            &params(json!({"node": "-pve"})),
        )
        .unwrap_err();
    assert_eq!(
        bad_node["node"],
        "invalid format - value does not look like a valid node name\n"
    );
    let storage = schema
        .validate_params(
            "GET",
            "/nodes/{node}/storage/{storage}/status",
            &params(json!({"node": "pve1", "storage": "local zfs"})),
        )
        .unwrap_err();
    assert_eq!(
        storage["storage"],
        "invalid format - storage ID 'local zfs' contains illegal characters\n"
    );
    assert_eq!(
        config_error(&schema, "tags", json!("k3s;k8s-node prod,x")),
        None
    );
    assert_eq!(
        config_error(&schema, "tags", json!("k3s;bad!tag")).unwrap(),
        "invalid format - invalid characters in tag\n"
    );
    assert_eq!(
        config_error(&schema, "sshkeys", json!("ssh-ed25519%20AAAA%2B%2F")),
        None
    );
    assert_eq!(
        config_error(&schema, "sshkeys", json!("ssh-ed25519 AAAA")).unwrap(),
        "invalid format - invalid urlencoded string: ssh-ed25519 AAAA\n"
    );
    assert_eq!(
        config_error(&schema, "nameserver", json!("10.20.0.1 1.1.1.1 ::1")),
        None
    );
    assert_eq!(
        config_error(&schema, "nameserver", json!("10.20.0.1 not_an_address")).unwrap(),
        "invalid format - value does not look like a valid address: not_an_address\n"
    );
    let pool = schema
        .validate_params(
            "POST",
            CLONE,
            &params(json!({"node": "pve1", "vmid": 9000, "newid": 150, "pool": "a b"})),
        )
        .unwrap_err();
    assert_eq!(
        pool["pool"],
        "invalid format - pool name 'a b' contains invalid characters\n"
    );
}

#[test]
fn cloud_init_ipconfig() {
    let schema = real();
    for ok in [
        "ip=10.20.0.11/24,gw=10.20.0.1",
        "ip=dhcp",
        "ip6=auto",
        "ip=dhcp,ip6=fd00::5/64",
    ] {
        assert_eq!(config_error(&schema, "ipconfig0", json!(ok)), None, "{ok}");
    }
    assert_eq!(
        config_error(&schema, "ipconfig0", json!("ip=10.20.0.11")).unwrap(),
        "invalid format - format error\nipconfig0.ip: invalid format - value does not look like a valid ipv4 network configuration\n"
    );
    assert_eq!(
        config_error(&schema, "ipconfig1", json!("gw=10.0.0.1")).unwrap(),
        "invalid format - format error\nipconfig1.ip: missing property - 'ipconfig1.gw' requires this property\n"
    );
}

#[test]
fn indexed_names_follow_the_stated_bounds() {
    let schema = real();
    assert_eq!(
        config_error(&schema, "net0", json!("virtio,bridge=vmbr1")),
        None
    );
    assert_eq!(
        config_error(&schema, "net31", json!("virtio,bridge=vmbr1")),
        None
    );
    assert_eq!(
        config_error(&schema, "scsi30", json!("local-zfs:vm-101-disk-1,size=4G")),
        None
    );
    let undefined =
        "property is not defined in schema and the schema does not allow additional properties";
    assert_eq!(
        config_error(&schema, "net32", json!("virtio")).unwrap(),
        undefined
    );
    assert_eq!(
        config_error(&schema, "scsi31", json!("local-zfs:1")).unwrap(),
        undefined
    );
    assert_eq!(
        config_error(&schema, "ide4", json!("none,media=cdrom")).unwrap(),
        undefined
    );
    assert_eq!(
        config_error(&schema, "net01", json!("virtio")).unwrap(),
        undefined
    );
}

#[test]
fn property_strings() {
    let schema = real();
    for ok in [
        "virtio=BC:24:11:00:00:01,bridge=vmbr1,tag=20",
        "virtio,bridge=vmbr1,tag=20,firewall=1",
        "model=e1000,macaddr=BC:24:11:00:00:01,bridge=vmbr0",
        "virtio,bridge=vmbr1,firewall=on",
    ] {
        assert_eq!(config_error(&schema, "net0", json!(ok)), None, "{ok}");
    }
    let cases = [
        (
            "net0",
            "virtio,bridge=vmbr1,tag=5000",
            "invalid format - format error\nnet0.tag: value must have a maximum value of 4094\n",
        ),
        (
            "net0",
            "virtio,bridge=vmbr1,fwgroup=x",
            "invalid format - format error\nnet0.fwgroup: property is not defined in schema and the schema does not allow additional properties\n",
        ),
        (
            "net0",
            "virtio=01:24:11:00:00:01,bridge=vmbr1",
            "invalid format - format error\nnet0.macaddr: invalid format - value does not look like a valid unicast MAC address\n",
        ),
        (
            "net0",
            "bridge=vmbr1",
            "invalid format - format error\nnet0.model: property is missing and it is not optional\n",
        ),
        (
            "net0",
            "virtio,e1000",
            "invalid format - duplicate key in comma-separated list property: model\n",
        ),
        (
            "net0",
            "virtio,=x",
            "invalid format - missing key in comma-separated list property\n",
        ),
        (
            "memory",
            "8",
            "invalid format - format error\nmemory.current: value must have a minimum value of 16\n",
        ),
        (
            "agent",
            "enabled=maybe",
            "invalid format - format error\nagent.enabled: type check ('boolean') failed - got 'maybe'\n",
        ),
    ];
    for (key, value, expected) in cases {
        assert_eq!(
            config_error(&schema, key, json!(value)).as_deref(),
            Some(expected),
            "{key}={value}"
        );
    }
    for (key, ok) in [
        ("memory", json!("2048")),
        ("memory", json!("current=2048")),
        ("memory", json!(2048)),
        ("agent", json!("1")),
        ("agent", json!("enabled=1,fstrim_cloned_disks=1")),
        (
            "scsi0",
            json!("local-zfs:vm-101-disk-0,size=40G,discard=on,ssd=1"),
        ),
        ("ide2", json!("local-zfs:cloudinit")),
    ] {
        assert_eq!(config_error(&schema, key, ok.clone()), None, "{key}={ok}");
    }
}

#[test]
fn returns_are_checked_perl_leniently() {
    let schema = real();
    assert_eq!(
        schema.validate_returns("GET", "/cluster/nextid", &json!("100")),
        Ok(())
    );
    assert_eq!(
        schema.validate_returns("GET", "/cluster/nextid", &json!(100)),
        Ok(())
    );
    assert_eq!(
        schema.validate_returns("GET", "/cluster/nextid", &json!("abc")),
        Err(vec![
            "_root: type check ('integer') failed - got 'abc'".to_owned()
        ])
    );
    let list = "/nodes/{node}/qemu";
    let vm = |template: Value| json!([{"vmid": "101", "status": "running", "template": template, "cpus": "4"}]);
    for template in [json!(1), json!("0"), json!(true), json!("1")] {
        assert_eq!(
            schema.validate_returns("GET", list, &vm(template.clone())),
            Ok(()),
            "{template}"
        );
    }
    assert!(
        schema
            .validate_returns("GET", list, &vm(json!("yes")))
            .is_err()
    );
    let errors = schema
        .validate_returns("GET", list, &json!([{"status": "paused", "vmid": 101}, {}]))
        .unwrap_err();
    assert_eq!(
        errors,
        vec![
            "[0].status: value 'paused' does not have a value in the enumeration 'stopped, running'",
            "[1].status: property is missing and it is not optional",
            "[1].vmid: property is missing and it is not optional",
        ]
    );
    assert_eq!(schema.validate_returns("PUT", CONFIG, &Value::Null), Ok(()));
    assert!(
        schema
            .validate_returns("GET", "/version", &json!([]))
            .is_err()
    );
}

#[test]
fn routes_resolve_templates_and_decode_segments() {
    let schema = real();
    let route = schema
        .route(
            "get",
            "/nodes/pve1/tasks/UPID%3Apve1%3A0000AB12%3A00C0FFEE%3A65000000%3Aqmclone%3A9000%3Aroot%40pam%21ci%3A/status",
        )
        .unwrap();
    assert_eq!(route.template, "/nodes/{node}/tasks/{upid}/status");
    assert_eq!(route.path_params["node"], "pve1");
    assert_eq!(
        route.path_params["upid"],
        "UPID:pve1:0000AB12:00C0FFEE:65000000:qmclone:9000:root@pam!ci:"
    );
    assert_eq!(
        schema.route("GET", "/foo").unwrap_err().to_string(),
        "Method 'GET /foo' not implemented"
    );
    assert!(matches!(
        schema.route("DELETE", "/version"),
        Err(RouteError::NoSuchMethod { .. })
    ));
    assert_eq!(
        schema.route("GET", "/nodes/pve1/qemu/").unwrap().template,
        "/nodes/{node}/qemu"
    );
}

#[test]
fn literal_segments_win_over_parameters() {
    let tree = json!([{
        "path": "/a", "text": "a", "leaf": 0, "info": {"GET": {}},
        "children": [
            {"path": "/a/{id}", "info": {"GET": {}}, "children": [
                {"path": "/a/{id}/x", "info": {"GET": {}}}
            ]},
            {"path": "/a/special", "info": {"GET": {}}}
        ]
    }]);
    let schema = ApiSchema::from_tree(tree).unwrap();
    assert_eq!(
        schema.route("GET", "/a/special").unwrap().template,
        "/a/special"
    );
    assert_eq!(schema.route("GET", "/a/other").unwrap().template, "/a/{id}");
    // Backtracks into the parameter when the literal branch dead-ends.
    let route = schema.route("GET", "/a/special/x").unwrap();
    assert_eq!(route.template, "/a/{id}/x");
    assert_eq!(route.path_params["id"], "special");
}

#[test]
fn locate_lists_every_path_tried() {
    let err = SchemaError::NotFound {
        tried: vec!["/x/../shared/pve-api/pve8-apidata.json".into(), "/y".into()],
    }
    .to_string();
    assert!(
        err.contains("/x/../shared") && err.contains("\n  /y"),
        "{err}"
    );
    assert!(err.contains(SCHEMA_ENV), "{err}");
    assert_eq!(
        normalize(Path::new("/work/main/../shared/pve-api/f.json")),
        PathBuf::from("/work/shared/pve-api/f.json")
    );
    assert_eq!(normalize(Path::new("/../shared")), PathBuf::from("/shared"));
}
