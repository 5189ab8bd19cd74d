//! Unicode-aware name comparison: accents and case are folded for matching only (the stored and
//! written values keep their spelling), common nicknames and diminutives are the same first name,
//! and spelling slips are caught with Jaro-Winkler (`strsim`).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::nicknames;

/// Lower case, accents removed (NFKD, combining marks dropped), letters outside that scheme
/// mapped (`ß` → `ss`, `ø` → `o`, ...), punctuation and hyphens become spaces, spaces collapsed.
/// "José-María  O'Neill" → "jose maria o neill".
pub fn fold(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        for l in c.to_lowercase() {
            match l {
                'ß' => out.push_str("ss"),
                'ø' => out.push('o'),
                'æ' => out.push_str("ae"),
                'œ' => out.push_str("oe"),
                'ł' => out.push('l'),
                'đ' | 'ð' => out.push('d'),
                'þ' => out.push_str("th"),
                'ı' => out.push('i'),
                l if l.is_alphanumeric() => out.push(l),
                _ => out.push(' '),
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Jaro-Winkler at or above this, with the guards in [`same_first_name`], is a spelling slip.
pub const FIRST_NAME_JW: f64 = 0.93;
/// Family names: a slip ("Gonzales"/"Gonzalez", "Thompson"/"Thomson").
pub const LAST_NAME_JW: f64 = 0.92;

/// Feminine/masculine pairs that differ by an ending: Mario/Maria, Paul/Paula, Daniel/Danielle,
/// Francisco/Francisca. Close in spelling, different people — often in the same household.
fn gendered_pair(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if let Some(rest) = long.strip_prefix(short)
        && ["a", "e", "le", "la", "ne", "na", "ette", "ina", "ine", "elle"].contains(&rest)
    {
        return true;
    }
    // Different short endings after a common stem, one of them feminine in -a:
    // Mario/Maria, Alexander/Alexandra, Christian/Christina, Julio/Julia.
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let (ra, rb): (String, String) = (a.chars().skip(common).collect(), b.chars().skip(common).collect());
    common >= 2 && ra.chars().count() <= 3 && rb.chars().count() <= 3 && (ra.ends_with('a') != rb.ends_with('a'))
}

/// Whether two given names are the same person's (both folded or not: they are folded here).
/// Equal, nicknames of one name, or a spelling slip (Jaro-Winkler ≥ 0.93 on names of 4+ letters
/// that are not a gendered pair). A first initial alone matches its name ("J." vs "John").
pub fn same_first_name(a: &str, b: &str) -> bool {
    let (a, b) = (fold(a), fold(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    // Compound given names: "Maria Jose" vs "Maria" — the first word carries the name.
    let (fa, fb) = (a.split(' ').next().unwrap_or(""), b.split(' ').next().unwrap_or(""));
    if fa == fb && (a.contains(' ') || b.contains(' ')) {
        return true;
    }
    if (fa.len() == 1 && fb.starts_with(fa)) || (fb.len() == 1 && fa.starts_with(fb)) {
        return true;
    }
    if nicknames::related(fa, fb) {
        return true;
    }
    fa.chars().count() >= 4
        && fb.chars().count() >= 4
        && !gendered_pair(fa, fb)
        && strsim::jaro_winkler(fa, fb) >= FIRST_NAME_JW
}

/// Family-name particles left out when comparing ("de la Cruz" vs "Cruz").
const PARTICLES: &[&str] =
    &["de", "del", "la", "las", "los", "van", "von", "der", "den", "da", "di", "du", "le", "y", "e"];

fn surname_words(folded: &str) -> Vec<&str> {
    folded.split(' ').filter(|w| !w.is_empty() && !PARTICLES.contains(w)).collect()
}

/// Whether two family names are the same: folded equal, one's words contained in the other's
/// (Spanish double surnames: "García" vs "García López"), or a slip (Jaro-Winkler ≥ 0.92).
pub fn same_last_name(a: &str, b: &str) -> bool {
    let (a, b) = (fold(a), fold(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let (wa, wb) = (surname_words(&a), surname_words(&b));
    if wa.is_empty() || wb.is_empty() {
        return false;
    }
    let (short, long) = if wa.len() <= wb.len() { (&wa, &wb) } else { (&wb, &wa) };
    if short.iter().all(|w| long.contains(w)) {
        return true;
    }
    strsim::jaro_winkler(&wa.join(" "), &wb.join(" ")) >= LAST_NAME_JW
}

/// A similarity score in 0..=1 for ranking candidates by name (Jaro-Winkler on folded names,
/// nicknames scoring as equal first names).
pub fn name_score(first_a: &str, last_a: &str, first_b: &str, last_b: &str) -> f64 {
    let first =
        if same_first_name(first_a, first_b) { 1.0 } else { strsim::jaro_winkler(&fold(first_a), &fold(first_b)) };
    let last = if same_last_name(last_a, last_b) { 1.0 } else { strsim::jaro_winkler(&fold(last_a), &fold(last_b)) };
    (first + last) / 2.0
}

/// Postal codes compared on their significant part: upper case without spaces or dashes; a US
/// ZIP+4 compares by its first five digits.
pub fn zip_key(zip: &str) -> String {
    let z: String = zip.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    if z.len() == 9 && z.chars().all(|c| c.is_ascii_digit()) { z[..5].to_owned() } else { z }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_removes_accents_and_case_only() {
        assert_eq!(fold("José-María  O'Neill"), "jose maria o neill");
        assert_eq!(fold("MÜLLER"), "muller");
        assert_eq!(fold("Strauß"), "strauss");
        assert_eq!(fold("Søren Łukasz"), "soren lukasz");
        assert_eq!(fold("Nguyễn"), "nguyen");
        assert_eq!(fold("Ｊｏｓé"), "jose");
    }

    #[test]
    fn first_names_match_on_nicknames_and_slips_but_not_on_gendered_pairs() {
        for (a, b) in [
            ("Bill", "William"),
            ("Pepe", "José"),
            ("Paco", "Francisco"),
            ("Lupita", "Guadalupe"),
            ("Kate", "Catherine"),
            ("Jonathon", "Jonathan"),
            ("Stephen", "Steven"),
            ("MARÍA", "maria"),
            ("Maria Jose", "María"),
            ("J", "John"),
        ] {
            assert!(same_first_name(a, b), "{a} / {b}");
        }
        for (a, b) in [
            ("Mario", "Maria"),
            ("Paul", "Paula"),
            ("Daniel", "Danielle"),
            ("Francisco", "Francisca"),
            ("Mark", "Mike"),
            ("Ana", "Eva"),
            ("Alexander", "Alexandra"),
            ("Juan", "Juana"),
        ] {
            assert!(!same_first_name(a, b), "{a} / {b}");
        }
    }

    #[test]
    fn last_names_fold_accents_particles_and_double_surnames() {
        assert!(same_last_name("González", "GONZALEZ"));
        assert!(same_last_name("de la Cruz", "Cruz"));
        assert!(same_last_name("García López", "Garcia"));
        assert!(same_last_name("Thompson", "Thomson"));
        assert!(!same_last_name("Smith", "Jones"));
        assert!(!same_last_name("Lopez", "Perez"));
    }

    #[test]
    fn zips_compare_on_their_significant_part() {
        assert_eq!(zip_key("94110-1234"), "94110");
        assert_eq!(zip_key("sw1a 1aa"), "SW1A1AA");
        assert_eq!(zip_key("K1A 0B1"), "K1A0B1");
    }
}
