//! The config file's parser, checked against every key's good and bad values.

use super::*;

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
}

#[test]
fn shipped_example_parses() {
    let text = include_str!("../../../../packaging/config.toml");
    let config = Config::parse(text).unwrap();
    assert_eq!(config.interfaces, ["eth1", "eth2"]);
    assert_eq!(config.policy.mode, Mode::Enforce);
    assert_eq!(config.policy.ports, DEFAULT_PORTS.into_iter().collect());
    assert_eq!(config.policy.allow, Policy::apple_defaults().allow);
    assert_eq!(config.policy.providers.len(), 1);
    assert_eq!(
        config.roles,
        [
            ("eth1".to_owned(), InterfaceRole::Devices),
            ("eth2".to_owned(), InterfaceRole::Upstream)
        ]
        .into()
    );
    // The example spells out the defaults.
    assert_eq!(config.clients, ClientsConfig::default());
}

#[test]
fn clients_settings_parse_and_are_checked() {
    let config = Config::parse(
        "[roles]\nlan0 = \"devices\"\n[clients]\ntable_size = 1024\nidle_cut_min = 2\nfallback_window = 30\n",
    )
    .unwrap();
    assert_eq!(config.roles["lan0"], InterfaceRole::Devices);
    assert_eq!(config.clients.table_size, 1024);
    assert_eq!(config.clients.rules.idle_cut_min, Duration::from_secs(2));
    assert_eq!(
        config.clients.rules.fallback_window,
        Duration::from_secs(30)
    );
    assert_eq!(config.clients.rules.window, Rules::default().window);
    assert_errors(&[
        (
            "[roles]\nlan0 = \"lan\"\n",
            &["line 2", "lan0", "expected devices or upstream"][..],
        ),
        ("[roles]\n\"a/b\" = \"devices\"\n", &["a/b"][..]),
        (
            "[clients]\ntable_size = 10\n",
            &["line 2", "table_size", "out of range"][..],
        ),
        (
            "[clients]\nwindow = 0\n",
            &["line 2", "window", "1 or more seconds"][..],
        ),
        (
            "[clients]\nidle_cut_repeat = 0\n",
            &["line 2", "1 or more"][..],
        ),
        ("[clients]\nkeepalive = 5\n", &["line 2", "keepalive"][..]),
    ]);
}

#[test]
fn errors_name_line_and_key() {
    assert_errors(&[
        (
            "mode = \"enforce\"\nallow = [\"17.1.0.0/8\"]\n",
            &["line 2", "allow", "host bits"][..],
        ),
        (
            "providers = [\"10.0.0.0/33\"]\n",
            &["line 1", "providers"][..],
        ),
        (
            "mode = \"block\"\n",
            &["line 1", "mode", "expected monitor or enforce"][..],
        ),
        (
            "[events]\nsample_every = 0\n",
            &["line 2", "sample_every", "1 or more"][..],
        ),
        (
            "[fastpath]\neth0 = \"fast\"\n",
            &["line 2", "eth0", "expected pass, mark or redirect"][..],
        ),
        (
            "[ports]\n\"70000\" = [\"apns\"]\n",
            &["line 2", "out of range"][..],
        ),
        (
            "[ports]\n\"0\" = [\"apns\"]\n",
            &["line 2", "out of range"][..],
        ),
        (
            "[ports]\n\"5223\" = [\"tunnel\"]\n",
            &["line 2", "tunnel"][..],
        ),
        (
            "interfaces = [\"eth0\"]\ncolour = \"red\"\n",
            &["line 2", "colour"][..],
        ),
        ("interfaces = \"eth0\"\n", &["line 1", "interfaces"][..]),
        ("xdp_mode = \"hw\"\n", &["line 1", "xdp_mode"][..]),
        ("allow = [\"17.0.0.0/8\"\n", &["line"][..]),
    ]);
}

/// Each text fails to parse with an error that holds every one of its needles.
fn assert_errors(cases: &[(&str, &[&str])]) {
    for (text, needles) in cases {
        let err = format!("{:#}", Config::parse(text).unwrap_err());
        for needle in *needles {
            assert!(
                err.contains(needle),
                "error for {text:?} lacks {needle:?}: {err}"
            );
        }
    }
}

#[test]
fn presets_inline_lists_and_list_files_merge() {
    let dir = std::env::temp_dir().join(format!("apns-config-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("allow.txt"),
        "# extra Apple ranges\n198.51.100.0/24  # lab\n\n2001:db8::/32\n",
    )
    .unwrap();
    std::fs::write(dir.join("mdm.txt"), "192.0.2.10\n").unwrap();
    std::fs::write(dir.join("bad.txt"), "198.51.100.0/24\n17.1.0.0/8\n").unwrap();
    let config_path = dir.join("config.toml");
    std::fs::write(
        &config_path,
        "apple = \"narrow\"\nallow = [\"203.0.113.0/24\"]\nallow_files = [\"allow.txt\"]\nprovider_files = [\"mdm.txt\"]\n",
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let mut expected = ApplePreset::Narrow.prefixes();
    for net in ["203.0.113.0/24", "198.51.100.0/24", "2001:db8::/32"] {
        expected.insert(net.parse().unwrap());
    }
    assert_eq!(config.policy.allow, expected);
    assert_eq!(
        config.policy.providers,
        ["192.0.2.10/32".parse().unwrap()].into()
    );
    assert_eq!(config.sources.apple, ApplePreset::Narrow);
    assert_eq!(config.sources.allow_files, [dir.join("allow.txt")]);

    std::fs::write(&config_path, "allow_files = [\"bad.txt\"]\n").unwrap();
    let err = format!("{:#}", Config::load(&config_path).unwrap_err());
    assert!(
        err.contains("allow_files") && err.contains("bad.txt line 2") && err.contains("host bits"),
        "{err}"
    );
    std::fs::write(
        &config_path,
        "apple = \"none\"\nprovider_files = [\"missing.txt\"]\n",
    )
    .unwrap();
    let err = format!("{:#}", Config::load(&config_path).unwrap_err());
    assert!(err.contains("missing.txt"), "{err}");
    std::fs::write(&config_path, "apple = \"none\"\n").unwrap();
    assert!(Config::load(&config_path).unwrap().policy.allow.is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pin_dir_alone_is_read_whatever_else_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let pin_dir = |text: &str| {
        std::fs::write(&path, text).unwrap();
        load_pin_dir(&path).map_err(|err| format!("{err:#}"))
    };
    // A literal string, a missing list file, a bad prefix and an unknown key: Config::load
    // refuses each of them, the pin directory is read all the same.
    let broken = "allow_files = ['missing.txt']\nproviders = [\"10.0.0.0/33\"]\ncolour = 1\npin_dir = '/sys/fs/bpf/a\\b'\n";
    assert_eq!(pin_dir(broken).unwrap(), "/sys/fs/bpf/a\\b");
    assert!(Config::load(&path).is_err());
    assert_eq!(pin_dir("mode = \"enforce\"\n").unwrap(), DEFAULT_PIN_DIR);
    let err = pin_dir("mode = \"enforce\"\npin_dir = 5\n").unwrap_err();
    assert!(
        err.contains("line 2")
            && err.contains("pin_dir")
            && err.contains(&path.display().to_string()),
        "{err}"
    );
    let err = pin_dir("pin_dir = \"/sys/fs/bpf/x\n").unwrap_err();
    assert!(err.contains("line 1"), "{err}");
    let missing = dir.path().join("none.toml");
    let err = format!("{:#}", load_pin_dir(&missing).unwrap_err());
    assert!(err.contains(&missing.display().to_string()), "{err}");
}

#[test]
fn bad_interface_names_are_refused() {
    for text in [
        "interfaces = [\"\"]",
        "interfaces = [\"a/b\"]",
        "interfaces = [\"averyveryverylongname\"]",
    ] {
        assert!(Config::parse(text).is_err(), "{text}");
    }
}

#[test]
fn ports_and_roles_parse() {
    assert_eq!(parse_port("5223").unwrap(), 5223);
    for bad in ["0", "65536", "70000", "-1", "x", ""] {
        assert!(parse_port(bad).is_err(), "{bad}");
    }
    assert_eq!(
        parse_roles(&["pinhole"]).unwrap(),
        role::APNS | role::PINHOLE
    );
    assert!(parse_roles(&["bogus"]).is_err());
    assert_eq!(
        role_names(role::APNS | role::PROVIDER),
        ["apns", "provider"]
    );
}
