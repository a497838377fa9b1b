use super::*;

fn parse(text: &str) -> UnitFile {
    UnitFile::parse("test.service", text).expect("valid unit")
}

fn name(text: &str) -> UnitName {
    UnitName::parse(text).expect("valid name")
}

fn rules(unit_name: &str, text: &str) -> Result<Requirements, RequirementsError> {
    parse(text).requirements(&name(unit_name))
}

#[test]
fn sections_keys_and_values_are_trimmed() {
    let unit = parse("[Unit]\nDescription = Hello World \n\n[Service]\nExecStart=/bin/true\n");
    assert_eq!(unit.value("Unit", "Description"), Some("Hello World"));
    assert_eq!(unit.value("Service", "ExecStart"), Some("/bin/true"));
    assert_eq!(unit.sections().len(), 2);
}

#[test]
fn comments_are_skipped() {
    let unit = parse(
        "# leading\n; semicolon\n[Unit]\n  # indented comment\nDescription=x # not a comment\n",
    );
    assert_eq!(unit.value("Unit", "Description"), Some("x # not a comment"));
}

#[test]
fn continuation_lines_are_joined_with_a_space() {
    let unit = parse(
        "[Service]\nExecStart=/bin/echo \\\n  one \\\n# comment inside\n  two\nUser=nobody\n",
    );
    // systemd replaces the backslash by a space and strips the next line's indentation.
    assert_eq!(
        unit.value("Service", "ExecStart"),
        Some("/bin/echo  one  two")
    );
    assert_eq!(unit.value("Service", "User"), Some("nobody"));
}

#[test]
fn repeated_keys_accumulate_and_empty_resets() {
    let unit =
        parse("[Service]\nEnvironment=A=1\nEnvironment=B=2\nEnvironment=\nEnvironment=C=3\n");
    let values: Vec<&str> = unit
        .values("Service", "Environment")
        .iter()
        .map(|a| a.value.as_str())
        .collect();
    assert_eq!(values, ["C=3"]);
    let unit = parse("[Service]\nUser=a\nUser=\n");
    assert_eq!(unit.value("Service", "User"), None);
}

#[test]
fn repeated_sections_merge() {
    let unit = parse(
        "[X-Fleet]\nConflicts=a.service\n[Service]\nExecStart=/x\n[X-Fleet]\nConflicts=b.service\n",
    );
    assert_eq!(unit.sections().len(), 2);
    assert_eq!(unit.values("X-Fleet", "Conflicts").len(), 2);
}

#[test]
fn syntax_errors_name_file_and_line() {
    let err = UnitFile::parse("web.service", "[Unit]\nDescription=x\nbogus line\n").unwrap_err();
    assert_eq!(err.line, 3);
    assert_eq!(err.file, "web.service");
    assert!(
        err.to_string().starts_with("web.service:3: missing '='"),
        "{err}"
    );
    let err = UnitFile::parse("a.service", "Description=x\n").unwrap_err();
    assert_eq!(
        (err.line, err.message.contains("outside of a section")),
        (1, true)
    );
    let err = UnitFile::parse("a.service", "\n[Unit\n").unwrap_err();
    assert_eq!(err.line, 2);
    let err = UnitFile::parse("a.service", "[Unit]\n=value\n").unwrap_err();
    assert_eq!(err.line, 2);
}

#[test]
fn hash_ignores_formatting_but_not_content() {
    let a = parse("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/a\\\n b\n");
    let b = parse("# comment\n[Unit]\nDescription = x\n\n[Service]\nExecStart=/bin/a b\n");
    let c = parse("[Unit]\nDescription=y\n[Service]\nExecStart=/bin/a b\n");
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
    assert_eq!(a.hash().len(), 40);
    assert_eq!(parse(&a.serialize()).serialize(), a.serialize());
}

#[test]
fn unit_names_templates_and_instances() {
    let plain = name("hello.service");
    assert_eq!(
        (plain.prefix(), plain.instance(), plain.suffix()),
        ("hello", "", "service")
    );
    assert!(!plain.is_template() && !plain.is_instance());
    let template = name("web@.service");
    assert!(template.is_template());
    assert_eq!(template.template(), None);
    let instance = name("web@8080.service");
    assert!(instance.is_instance());
    assert_eq!(instance.template().as_deref(), Some("web@.service"));
    assert_eq!(
        (instance.prefix(), instance.instance(), instance.stem()),
        ("web", "8080", "web@8080")
    );
}

#[test]
fn unit_names_are_validated() {
    for bad in [
        "",
        "hello",
        "hello.bogus",
        "@1.service",
        "a@b@c.service",
        "sp ace.service",
        "x/y.service",
    ] {
        assert!(UnitName::parse(bad).is_err(), "{bad:?} should be refused");
    }
    for good in [
        "a.socket",
        "b.timer",
        "c.target",
        "d.mount",
        "e-f_g:h.service",
    ] {
        assert!(UnitName::parse(good).is_ok(), "{good:?} should be accepted");
    }
    assert!(UnitName::parse(&format!("{}.service", "a".repeat(300))).is_err());
}

#[test]
fn specifiers_expand() {
    let instance = name("web@8080.service");
    assert_eq!(
        instance.expand_specifiers("%n %N %p %i 100%%"),
        "web@8080.service web@8080 web 8080 100%"
    );
    assert_eq!(name("db.service").expand_specifiers("%p-%i-%x"), "db--%x");
}

#[test]
fn word_splitting_with_quotes_and_escapes() {
    assert_eq!(
        split_words(r#"/bin/sh -c "echo 'hi there'" a\ b 'x"y' \x41"#).unwrap(),
        ["/bin/sh", "-c", "echo 'hi there'", "a b", "x\"y", "A"]
    );
    assert!(split_words("\"unterminated").is_err());
}

#[test]
fn no_x_fleet_section_means_no_rules() {
    assert_eq!(
        rules("a.service", "[Service]\nExecStart=/x\n").unwrap(),
        Requirements::default()
    );
}

#[test]
fn machine_id_full_and_short() {
    let r = rules(
        "a.service",
        "[X-Fleet]\nMachineID=0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    assert!(r.machine_id_matches("0123456789abcdef0123456789abcdef"));
    assert!(!r.machine_id_matches("ffffffff89abcdef0123456789abcdef"));
    let r = rules("a.service", "[X-Fleet]\nMachineID=01234567\n").unwrap();
    assert!(r.machine_id_matches("0123456789abcdef0123456789abcdef"));
    assert!(
        !r.machine_id_matches(
            "0123456789abcdefffffffffffffffff"
                .replace("01234567", "7654321a")
                .as_str()
        )
    );
    let err = rules("a.service", "[X-Fleet]\nMachineID=a b\n").unwrap_err();
    assert_eq!(err.line, 2);
}

#[test]
fn machine_of_and_conflicts_split_on_whitespace_and_expand_specifiers() {
    let r = rules(
        "web@1.service",
        "[X-Fleet]\nMachineOf=db@%i.service cache.service\nConflicts=web@*.service\nConflicts=%p-sidekick@%i.service\n",
    )
    .unwrap();
    assert_eq!(r.machine_of, ["db@1.service", "cache.service"]);
    assert_eq!(r.conflicts, ["web@*.service", "web-sidekick@1.service"]);
    assert!(r.conflicts_with("web@2.service"));
    assert!(!r.conflicts_with("db@1.service"));
}

#[test]
fn deprecated_option_names_still_work() {
    let r = rules(
        "a.service",
        "[X-Fleet]\nX-ConditionMachineOf=b.service\nX-Conflicts=c*.service\nX-ConditionMachineMetadata=rack=1\n",
    )
    .unwrap();
    assert_eq!(r.machine_of, ["b.service"]);
    assert_eq!(r.conflicts, ["c*.service"]);
    assert_eq!(r.metadata.len(), 1);
}

#[test]
fn unknown_x_fleet_option_is_an_error_with_its_line() {
    let err = rules(
        "a.service",
        "[Unit]\nDescription=x\n[X-Fleet]\nMachineOff=b.service\n",
    )
    .unwrap_err();
    assert_eq!(err.line, 4);
    assert!(
        err.to_string()
            .contains("unrecognized option \"MachineOff\""),
        "{err}"
    );
}

fn machine(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn metadata_same_key_is_or_different_keys_are_and() {
    let r = rules(
        "a.service",
        "[X-Fleet]\nMachineMetadata=region=us-east region=us-west\nMachineMetadata=\"disk=ssd\"\n",
    )
    .unwrap();
    assert!(r.metadata_matches(&machine(&[("region", "us-east"), ("disk", "ssd")])));
    assert!(r.metadata_matches(&machine(&[("region", "us-west"), ("disk", "ssd")])));
    assert!(!r.metadata_matches(&machine(&[("region", "eu"), ("disk", "ssd")])));
    assert!(!r.metadata_matches(&machine(&[("region", "us-east")])));
    assert!(!r.metadata_matches(&machine(&[])));
}

#[test]
fn metadata_not_equal_excludes() {
    let r = rules("a.service", "[X-Fleet]\nMachineMetadata=role!=db\n").unwrap();
    assert!(r.metadata_matches(&machine(&[("role", "web")])));
    assert!(r.metadata_matches(&machine(&[])));
    assert!(!r.metadata_matches(&machine(&[("role", "db")])));
    let r = rules(
        "a.service",
        "[X-Fleet]\nMachineMetadata=rack=1 rack=2 rack!=2\n",
    )
    .unwrap();
    assert!(r.metadata_matches(&machine(&[("rack", "1")])));
    assert!(!r.metadata_matches(&machine(&[("rack", "2")])));
}

#[test]
fn metadata_syntax_errors() {
    for bad in ["rack", "=1", "rack=", "rack!="] {
        let text = format!("[X-Fleet]\nMachineMetadata={bad}\n");
        let err = rules("a.service", &text).unwrap_err();
        assert_eq!(err.line, 2, "{bad}");
    }
}

#[test]
fn global_is_a_boolean() {
    assert!(
        rules("a.service", "[X-Fleet]\nGlobal=true\n")
            .unwrap()
            .global
    );
    assert!(
        rules("a.service", "[X-Fleet]\nGlobal=yes\n")
            .unwrap()
            .global
    );
    assert!(
        !rules("a.service", "[X-Fleet]\nGlobal=false\n")
            .unwrap()
            .global
    );
    assert!(rules("a.service", "[X-Fleet]\nGlobal=maybe\n").is_err());
}

#[test]
fn replaces_globs() {
    let r = rules("new.service", "[X-Fleet]\nReplaces=old*.service\n").unwrap();
    assert!(r.replaces_unit("old-1.service"));
    assert!(!r.replaces_unit("new.service"));
}

#[test]
fn invalid_combinations_like_fleet() {
    let id = "MachineID=0123456789abcdef0123456789abcdef";
    let cases = [
        (
            format!("{id}\nMachineOf=b.service"),
            "MachineID cannot be used with MachineOf",
        ),
        (
            format!("{id}\nConflicts=b.service"),
            "MachineID cannot be used with Conflicts",
        ),
        (
            format!("{id}\nReplaces=b.service"),
            "MachineID cannot be used with Replaces",
        ),
        (
            format!("{id}\nGlobal=true"),
            "MachineID cannot be used with Global",
        ),
        (
            "Global=true\nMachineOf=b.service".to_string(),
            "Global cannot be used with MachineOf",
        ),
        (
            "Global=true\nReplaces=b.service".to_string(),
            "Global cannot be used with Replaces",
        ),
        (
            "MachineOf=b.service\nConflicts=b*".to_string(),
            "MachineOf \"b.service\" matches Conflicts",
        ),
        (
            "MachineOf=b.service\nReplaces=*.service".to_string(),
            "MachineOf \"b.service\" matches Replaces",
        ),
    ];
    for (body, expected) in cases {
        let text = format!("[Service]\nExecStart=/x\n[X-Fleet]\n{body}\n");
        let err = rules("a.service", &text).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "{err} should mention {expected}"
        );
        assert_eq!(err.line, 4, "{err}");
        assert_eq!(err.file, "a.service");
    }
    assert!(
        rules(
            "a.service",
            "[X-Fleet]\nGlobal=true\nConflicts=b.service\nMachineMetadata=r=1\n"
        )
        .is_ok()
    );
}
