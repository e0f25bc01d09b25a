//! Fuzzes the GetRedisAllSession decoder and the HTTP classification around it: any body, with
//! any status, never panics; the byte scanner's answer is the serde reference decoder's, error
//! messages included; and an accepted answer's breakdowns add up to its sessions.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redis_session_exporter::acs;
use redis_session_exporter::das::{client, wire};
use redis_session_exporter::snapshot::Limits;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_sources: 3,
        max_commands: 3,
        max_client_names: 3,
    };
    let decoded = wire::decode(data, &limits);
    assert_eq!(decoded, wire::decode_reference(data, &limits));
    if let Ok(s) = decoded {
        let sum = |v: &[(String, u64)]| v.iter().map(|x| x.1).sum::<u64>();
        assert_eq!(sum(&s.by_node), s.sessions);
        assert_eq!(sum(&s.by_command), s.sessions);
        assert_eq!(sum(&s.by_client_name), s.sessions);
        assert_eq!(s.by_db.iter().map(|x| x.1).sum::<u64>(), s.sessions);
        assert_eq!(s.idle.count(), s.sessions);
        assert!(s.by_flag.iter().all(|&f| f <= s.sessions));
    }
    let _ = acs::error_code(data);
    for status in [200u16, 400, 503] {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        if let Err(e) = client::classify(status, None, data, &limits) {
            // Every failure maps to a bounded label.
            assert!(e.code().len() <= 64);
        }
    }
});
