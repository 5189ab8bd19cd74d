//! Caller identity benchmarks (issue 6): phone normalization, the identity index lookup, and the
//! match decision (name scoring included).
//! Run: `cargo bench --bench identity`; figures go to BENCHMARKS.md.

use std::hint::black_box;

use callside::connectors::crm::CrmContact;
use callside::identity::{ParsedPhone, Phone};
use callside::matching::{Claims, decide, names};
use callside::store::{IdentityKind, Store};
use criterion::{Criterion, criterion_group, criterion_main};
use rlibphonenumber::enums::Region;

const LAYOUTS: [&str; 8] = [
    "+14155550134",
    "(415) 555-0134",
    "415.555.0134 x99",
    "tel:+1-415-555-0134",
    "+44 (0)20 7946 0958",
    "+33 1 23 45 67 89",
    "anonymous",
    "sip:anonymous@pbx.example",
];

fn phone(raw: &str) -> Phone {
    match Phone::parse(raw, Region::US) {
        ParsedPhone::Number(p) => p,
        other => panic!("{raw}: {other:?}"),
    }
}

/// A CRM of 50 candidates (what several searches could return at most), one of them the caller.
fn crm() -> Vec<CrmContact> {
    let firsts = ["María", "José", "Ana", "William", "Katherine", "Jürgen", "Zoë", "Siobhán", "Guadalupe", "Paco"];
    let lasts = ["López", "García", "Smith", "Müller", "O'Brien", "Nguyễn", "de la Cruz", "Peña", "Kim", "Dubois"];
    (0..50)
        .map(|i| CrmContact {
            id: format!("{}", 1000 + i),
            first_name: Some(firsts[i % 10].into()),
            last_name: Some(lasts[(i / 5) % 10].into()),
            email: Some(format!("person{i}@example.com")),
            phones: vec![format!("(415) 555-{:04}", 2000 + i), format!("+1 212 555 {:04}", 3000 + i)],
            zip: Some(format!("9411{}", i % 10)),
            ..Default::default()
        })
        .collect()
}

fn bench_phones(c: &mut Criterion) {
    let mut g = c.benchmark_group("phone");
    g.bench_function("parse 8 layouts (US default region)", |b| {
        b.iter(|| {
            for raw in LAYOUTS {
                black_box(Phone::parse(black_box(raw), Region::US));
            }
        })
    });
    g.finish();
}

fn bench_index(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = rt.block_on(Store::open(&format!("sqlite://{}", dir.path().join("bench.db").display()))).unwrap();
    // 10,000 contacts, each with a phone and an email (one durable transaction each to set up).
    rt.block_on(async {
        for i in 0..10_000u32 {
            let phones = vec![format!("+1415{:07}", i)];
            store.index_record("t1", &i.to_string(), &phones, Some(&format!("p{i}@example.com")), 0).await.unwrap();
        }
    });
    let mut g = c.benchmark_group("index");
    let mut i = 0u32;
    g.bench_function("lookup phone among 10k contacts", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let ids = rt.block_on(store.lookup_identity("t1", IdentityKind::Phone, &format!("+1415{:07}", i))).unwrap();
            assert_eq!(ids.len(), 1);
            black_box(ids)
        })
    });
    g.finish();
}

fn bench_scoring(c: &mut Criterion) {
    let records = crm();
    let mut g = c.benchmark_group("scoring");
    let by_phone =
        Claims { phone: Some(phone("+14155552017")), name: Some("Jose Garcia".into()), ..Default::default() };
    g.bench_function("decide: phone + name over 50 candidates", |b| {
        b.iter(|| black_box(decide(black_box(&by_phone), &records, Region::US)))
    });
    let by_name_zip = Claims {
        phone: Some(phone("+16465550000")),
        name: Some("Pepe Garcia".into()),
        zip: Some("94111".into()),
        ..Default::default()
    };
    g.bench_function("decide: name + zip fallback over 50 candidates", |b| {
        b.iter(|| black_box(decide(black_box(&by_name_zip), &records, Region::US)))
    });
    g.bench_function("same_first_name (accents, nickname, slip, miss)", |b| {
        b.iter(|| {
            black_box(names::same_first_name("José", "Pepe"));
            black_box(names::same_first_name("MARÍA", "maria"));
            black_box(names::same_first_name("Jonathon", "Jonathan"));
            black_box(names::same_first_name("Mario", "Maria"));
        })
    });
    g.finish();
}

criterion_group!(benches, bench_phones, bench_index, bench_scoring);
criterion_main!(benches);
