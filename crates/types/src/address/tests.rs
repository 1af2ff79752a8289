use super::*;

#[test]
fn domains_are_lower_case_and_checked() {
    assert_eq!(
        Domain::parse("Example.ORG.").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(
        Domain::parse("[127.0.0.1]").unwrap().as_str(),
        "[127.0.0.1]"
    );
    assert_eq!(Domain::parse(""), Err(AddressError::EmptyDomain));
    assert_eq!(Domain::parse("a..b"), Err(AddressError::BadLabel));
    assert_eq!(
        Domain::parse("a b.c"),
        Err(AddressError::BadDomainChar(' '))
    );
    assert_eq!(Domain::parse(&"a".repeat(64)), Err(AddressError::BadLabel));
    assert!(!Domain::parse("bücher.example").unwrap().is_ascii());
}

#[test]
fn addresses_keep_the_local_part_case() {
    let a = Address::parse("Bob.Smith@Example.org").unwrap();
    assert_eq!(a.local_part(), "Bob.Smith");
    assert_eq!(a.domain().as_str(), "example.org");
    assert_eq!(a.to_string(), "Bob.Smith@example.org");
}

#[test]
fn odd_local_parts_are_quoted_on_the_wire() {
    let a = Address::parse("john doe@example.org").unwrap();
    assert_eq!(a.to_string(), "\"john doe\"@example.org");
    let a = Address::parse("a\"b@x.org").unwrap();
    assert_eq!(a.to_string(), "\"a\\\"b\"@x.org");
}

#[test]
fn bad_addresses_are_refused() {
    assert_eq!(Address::parse("nobody"), Err(AddressError::NoAt));
    assert_eq!(Address::parse("@x.org"), Err(AddressError::EmptyLocalPart));
    assert_eq!(
        Address::parse(&format!("{}@x.org", "a".repeat(65))),
        Err(AddressError::LocalPartTooLong)
    );
    assert_eq!(
        Address::parse("a\u{7}@x.org"),
        Err(AddressError::BadLocalPart)
    );
}

#[test]
fn reverse_paths_print_in_brackets() {
    assert_eq!(ReversePath::Null.to_string(), "<>");
    let a = ReversePath::Address(Address::parse("a@b.c").unwrap());
    assert_eq!(a.to_string(), "<a@b.c>");
}

#[test]
fn printed_addresses_parse_back_to_themselves() {
    // A quoted local part is quoted once on the wire however often it is stored and read.
    for local in ["john doe", "a\"b", "back\\slash", "a@b", ".dot", "plain"] {
        let a = Address::new(local, Domain::parse("example.org").unwrap()).unwrap();
        let again = Address::parse(&a.to_string()).unwrap();
        assert_eq!(again, a, "{local}");
        assert_eq!(again.to_string(), a.to_string());
    }
    let a = Address::parse("\"john doe\"@example.org").unwrap();
    assert_eq!(a.local_part(), "john doe");
    // Not one quoted string: kept as it is.
    let a = Address::parse("\"a\"b\"@example.org").unwrap();
    assert_eq!(a.local_part(), "\"a\"b\"");
}
