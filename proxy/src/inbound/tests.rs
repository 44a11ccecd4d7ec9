use super::*;

#[test]
fn a_refusal_is_logged_at_info_once_per_port_and_client_in_ten_seconds() {
    let log = DenialLog::default();
    let start = Instant::now();
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    assert!(log.first_in_a_while(8080, web, start));
    assert!(!log.first_in_a_while(8080, web, start + Duration::from_secs(9)));
    // Another port, another client: each its own.
    assert!(log.first_in_a_while(9090, web, start + Duration::from_secs(1)));
    assert!(log.first_in_a_while(8080, "unauthenticated", start + Duration::from_secs(1)));
    assert!(log.first_in_a_while(8080, web, start + DENIAL_LOG_EVERY));
    assert!(!log.first_in_a_while(8080, web, start + DENIAL_LOG_EVERY));
}

#[test]
fn the_refusal_log_remembers_a_bounded_number_of_clients() {
    let log = DenialLog::default();
    let start = Instant::now();
    for i in 0..DENIAL_LOG_PAIRS {
        assert!(log.first_in_a_while(80, &format!("client-{i}"), start));
    }
    // Full of pairs logged just now: a new one is not logged at info...
    assert!(!log.first_in_a_while(80, "newcomer", start + Duration::from_secs(1)));
    assert_eq!(log.0.lock().unwrap().len(), DENIAL_LOG_PAIRS);
    // ...until the others are old enough to forget.
    assert!(log.first_in_a_while(80, "newcomer", start + DENIAL_LOG_EVERY));
    assert_eq!(log.0.lock().unwrap().len(), 1);
}
