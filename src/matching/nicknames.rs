//! Common English and Spanish given names with their usual nicknames and diminutives. A name may
//! belong to several groups ("Alex" is Alexander's and Alexandra's); two names are related when
//! some group holds both — never transitively, so Alexander and Alexandra stay apart.
//!
//! Entries are folded (lower case, no accents), as [`super::names::fold`] produces.

use std::collections::HashMap;
use std::sync::LazyLock;

const GROUPS: &[&[&str]] = &[
    // English
    &["william", "will", "bill", "billy", "willy", "willie", "liam"],
    &["robert", "rob", "bob", "bobby", "robbie", "bert"],
    &["richard", "rick", "rich", "dick", "ricky", "richie"],
    &["james", "jim", "jimmy", "jamie"],
    &["john", "jon", "johnny", "jack", "jonny"],
    &["jonathan", "jon", "jonny", "johnny"],
    &["michael", "mike", "mikey", "mick", "mickey"],
    &["elizabeth", "liz", "beth", "lizzie", "betty", "eliza", "libby", "betsy", "liza", "elisabeth", "lisa"],
    &["katherine", "catherine", "kathryn", "katharine", "kate", "katie", "kathy", "cathy", "kat", "kit", "kitty"],
    &["margaret", "maggie", "meg", "peggy", "marge", "margie", "greta"],
    &["thomas", "tom", "tommy"],
    &["joseph", "joe", "joey"],
    &["charles", "charlie", "chuck", "chas"],
    &["christopher", "chris", "topher", "kit"],
    &["christina", "christine", "chris", "tina", "chrissy", "kristina", "kristine"],
    &["daniel", "dan", "danny"],
    &["david", "dave", "davey"],
    &["edward", "ed", "eddie", "ted", "ned"],
    &["anthony", "tony"],
    &["alexander", "alex", "xander", "sandy", "al"],
    &["alexandra", "alex", "lexi", "sasha", "sandra", "sandy"],
    &["andrew", "andy", "drew"],
    &["benjamin", "ben", "benny"],
    &["matthew", "matt", "matty"],
    &["nicholas", "nick", "nicky", "nico"],
    &["patrick", "pat", "paddy"],
    &["patricia", "pat", "patty", "trish", "tricia"],
    &["jennifer", "jen", "jenny"],
    &["jessica", "jess", "jessie"],
    &["rebecca", "becky", "becca"],
    &["samuel", "sam", "sammy"],
    &["samantha", "sam", "sammie"],
    &["stephen", "steven", "steve", "stevie"],
    &["susan", "sue", "susie", "suzanne"],
    &["deborah", "debra", "deb", "debbie"],
    &["victoria", "vicky", "vicki", "tori"],
    &["gregory", "greg"],
    &["timothy", "tim", "timmy"],
    &["kenneth", "ken", "kenny"],
    &["ronald", "ron", "ronnie"],
    &["donald", "don", "donnie"],
    &["jacob", "jake"],
    &["joshua", "josh"],
    &["zachary", "zach", "zack"],
    &["abigail", "abby", "abbie"],
    &["amanda", "mandy"],
    &["barbara", "barb", "barbie"],
    &["dorothy", "dot", "dottie"],
    &["frances", "fran", "frannie"],
    &["francis", "frank", "frankie"],
    &["frederick", "fred", "freddie"],
    &["gerald", "gerry", "jerry"],
    &["harold", "hal", "harry"],
    &["henry", "hank", "harry"],
    &["lawrence", "larry"],
    &["leonard", "leo", "len", "lenny"],
    &["nathaniel", "nathan", "nate", "nat"],
    &["pamela", "pam"],
    &["raymond", "ray"],
    &["theodore", "ted", "teddy", "theo"],
    &["valerie", "val"],
    &["walter", "walt"],
    &["jacqueline", "jackie"],
    &["peter", "pete"],
    &["philip", "phillip", "phil"],
    &["douglas", "doug"],
    &["gabriel", "gabe"],
    &["gabriela", "gabriella", "gabby", "gaby"],
    &["madeline", "madeleine", "maddie", "maddy"],
    &["olivia", "liv", "livvy"],
    &["emily", "em", "emmy"],
    &["allison", "alison", "ally", "allie"],
    &["cynthia", "cindy"],
    &["judith", "judy"],
    &["kimberly", "kim"],
    &["melissa", "mel", "missy"],
    &["michelle", "shelly", "michele"],
    // Spanish
    &["francisco", "paco", "pancho", "curro", "cisco", "fran", "frank"],
    &["francisca", "paca", "paquita", "pancha", "fran"],
    &["jose", "pepe", "chepe", "pepito"],
    &["josefa", "pepa", "pepita", "fina"],
    &["jesus", "chucho", "chuy", "chus"],
    &["guadalupe", "lupe", "lupita", "pita"],
    &["ignacio", "nacho", "nacio"],
    &["enrique", "quique", "kike"],
    &["manuel", "manolo", "manu", "lolo"],
    &["dolores", "lola", "loles", "lolita"],
    &["concepcion", "concha", "conchita", "chon"],
    &["rosario", "charo", "chayo"],
    &["consuelo", "chelo"],
    &["eduardo", "lalo", "edu"],
    &["gerardo", "lalo"],
    &["alejandro", "alex", "jandro", "ale"],
    &["alejandra", "alex", "ale", "jandra"],
    &["antonio", "tono", "tony", "toni"],
    &["roberto", "beto", "robert"],
    &["alberto", "beto", "tito"],
    &["guillermo", "memo", "guille", "willy"],
    &["luis", "lucho", "lucio"],
    &["rafael", "rafa"],
    &["ramon", "moncho", "mon"],
    &["santiago", "santi", "chago", "yago"],
    &["mercedes", "meche", "merche", "mecha"],
    &["fernando", "nando", "fer"],
    &["isabel", "isa", "chabela", "chabe"],
    &["carmen", "menchu", "carmencita"],
    &["graciela", "chela"],
    &["soledad", "sole"],
    &["socorro", "coco"],
    &["ana", "anna", "anita"],
    &["maria", "mari", "maruja", "maricarmen"],
    &["juan", "juanito", "juancho"],
    &["juana", "juanita"],
    &["pedro", "perico"],
    &["cristina", "cris", "tina"],
    &["cristobal", "toba", "cris"],
    &["rodrigo", "rodri"],
    &["ricardo", "richi", "rick", "ricky"],
    &["margarita", "marga", "rita"],
    &["teresa", "tere", "teresita"],
    &["beatriz", "bea"],
    &["federico", "fede", "kiko"],
    &["joaquin", "quin", "joaco"],
    &["jorge", "coque"],
    &["salvador", "chava", "salva"],
    &["vicente", "chente"],
    &["javier", "javi"],
    &["daniela", "dani"],
    &["miguel", "migue"],
];

static INDEX: LazyLock<HashMap<&'static str, Vec<usize>>> = LazyLock::new(|| {
    let mut index: HashMap<&'static str, Vec<usize>> = HashMap::new();
    for (g, names) in GROUPS.iter().enumerate() {
        for n in *names {
            index.entry(n).or_default().push(g);
        }
    }
    index
});

/// Whether some group holds both folded names.
pub fn related(a: &str, b: &str) -> bool {
    match (INDEX.get(a), INDEX.get(b)) {
        (Some(ga), Some(gb)) => ga.iter().any(|g| gb.contains(g)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_relate_names_without_transitivity() {
        assert!(related("bill", "william"));
        assert!(related("paco", "francisco"));
        assert!(related("alex", "alexandra") && related("alex", "alexander"));
        assert!(!related("alexander", "alexandra"));
        assert!(!related("francisco", "francisca"));
        assert!(!related("bill", "bob"));
    }

    #[test]
    fn every_entry_is_already_folded() {
        for names in GROUPS {
            for n in *names {
                assert_eq!(super::super::names::fold(n), *n, "{n}");
            }
        }
    }
}
