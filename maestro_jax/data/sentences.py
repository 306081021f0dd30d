"""English sentence generator for the synthetic corpus, and the A/B vocabulary split.

A small grammar (subjects, transitive and intransitive verbs in four tenses, objects, adjectives, numbers, places,
cities, times) over a lexicon of ~900 distinct lower-case words. Content lexemes are split into vocabulary A and B
(B ~17% of each content category, all inflections of a lexeme on the same side; function words always in A), so that
the corpus can hold words that are only ever seen as unspoken text (see `SPLIT_VOCABULARY`).

Sentences are lower-case words separated by single spaces, without punctuation: what the eval normaliser expects.
"""

import dataclasses
import random
from collections.abc import Callable, Iterable, Mapping

FUNCTION_WORDS = tuple(
    """the a an some this that these those my your his her our their in on at near under behind beside inside
    across through into to and because when during very too not is are was were will can could should might must he
    she we they you there by gave give gives went go goes going""".split()
)

# Nouns: "singular:plural" when the plural is irregular, "word" when it only takes -s, "word:word" when invariant.
PERSONS = """teacher farmer doctor driver painter singer sailor soldier student pilot nurse baker dancer writer lawyer
builder gardener fisherman:fishermen child:children woman:women man:men girl boy king queen neighbor friend brother
sister mother father uncle aunt guest stranger tourist visitor scientist musician waiter clerk""".split()
ANIMALS = """dog cat horse cow sheep:sheep goat pig rabbit mouse:mice fox:foxes bear wolf:wolves lion tiger monkey
elephant zebra giraffe duck goose:geese owl eagle frog snake whale dolphin turtle parrot spider bee squirrel donkey
camel penguin""".split()
THINGS = """book box:boxes bottle basket bag ball chair table lamp cup plate spoon knife:knives fork key coin letter map
phone clock picture pencil candle blanket pillow ladder hammer bucket rope umbrella mirror jacket hat shoe glove ring
necklace kite drum guitar violin piano ticket envelope wallet brush:brushes sock feather shovel""".split()
FOODS = """apple banana orange lemon cherry:cherries peach:peaches potato:potatoes tomato:tomatoes carrot onion cake
cookie sandwich:sandwiches egg pie melon grape pear cucumber biscuit pumpkin strawberry:strawberries mushroom
pineapple""".split()
MASS_FOODS = """bread cheese soup rice milk tea coffee honey butter water juice sugar salt flour chocolate pasta
yogurt""".split()
VEHICLES = """car bus:buses train truck bicycle boat ship plane taxi tractor van scooter helicopter wagon""".split()
PLACES = """kitchen garden station market library museum school hospital office bakery church village forest river
mountain beach bridge castle harbor factory airport theater park farm island valley desert hotel restaurant cinema
stadium garage cellar attic meadow lake field palace""".split()
CITIES = """london paris berlin madrid rome tokyo cairo lima oslo vienna dublin boston chicago denver sydney toronto
mumbai nairobi warsaw prague lisbon athens moscow seoul bangkok""".split()
NAMES = """anna peter maria john sarah david lucy thomas emma george olivia james sophie daniel laura michael grace
oliver julia samuel nina victor helen oscar ruby felix irene hugo zoe kevin""".split()
ADJECTIVES = """big small tall old young new red blue green yellow purple brown black white grey pink happy sad angry
tired hungry quiet loud busy lazy clever brave kind gentle friendly strange famous heavy bright dark empty full warm
cold hot wet dry soft hard smooth rough round sharp broken wooden golden silver plastic shiny dusty muddy tiny huge
enormous ancient modern expensive cheap beautiful ugly fresh sweet sour bitter salty spicy delicious noisy calm proud
nervous curious careful honest polite rich poor strong weak fast slow narrow wide deep shallow thick thin long quick
lucky silly funny serious sleepy lonely cheerful foolish wise fancy plain striped spotted fluffy crooked""".split()
ADVERBS = """quickly slowly quietly loudly carefully happily sadly suddenly softly gently proudly nervously politely
early late again together alone outside everywhere""".split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = "january february march april may june july august september october november december".split()
DAY_PARTS = "morning afternoon evening".split()
NUMBERS = "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty fifty".split()

# Verbs: "base 3sg past ing" and, for transitive ones, the noun categories their object may come from.
TRANSITIVE_VERBS = {
    "see sees saw seeing": "animal person vehicle thing",
    "find finds found finding": "animal thing food",
    "carry carries carried carrying": "thing food",
    "buy buys bought buying": "thing food vehicle",
    "sell sells sold selling": "thing food vehicle",
    "bring brings brought bringing": "thing food",
    "take takes took taking": "thing food",
    "hold holds held holding": "thing food animal",
    "paint paints painted painting": "thing vehicle place",
    "clean cleans cleaned cleaning": "thing vehicle place",
    "open opens opened opening": "thing",
    "wash washes washed washing": "thing vehicle food",
    "eat eats ate eating": "food",
    "cook cooks cooked cooking": "food",
    "bake bakes baked baking": "food",
    "draw draws drew drawing": "animal person thing place",
    "push pushes pushed pushing": "thing vehicle",
    "pull pulls pulled pulling": "thing vehicle",
    "lift lifts lifted lifting": "thing",
    "drop drops dropped dropping": "thing food",
    "throw throws threw throwing": "thing food",
    "catch catches caught catching": "thing animal",
    "hide hides hid hiding": "thing food",
    "follow follows followed following": "person animal vehicle",
    "visit visits visited visiting": "person place",
    "watch watches watched watching": "person animal vehicle",
    "fix fixes fixed fixing": "thing vehicle",
    "break breaks broke breaking": "thing",
    "borrow borrows borrowed borrowing": "thing vehicle",
    "choose chooses chose choosing": "thing food",
    "count counts counted counting": "thing animal food",
    "touch touches touched touching": "thing animal",
    "kick kicks kicked kicking": "thing",
    "chase chases chased chasing": "animal person",
    "feed feeds fed feeding": "animal person",
    "help helps helped helping": "person",
    "call calls called calling": "person animal",
    "meet meets met meeting": "person",
    "thank thanks thanked thanking": "person",
    "invite invites invited inviting": "person",
    "teach teaches taught teaching": "person",
    "remember remembers remembered remembering": "person place thing",
    "forget forgets forgot forgetting": "thing food",
    "keep keeps kept keeping": "thing animal",
    "lose loses lost losing": "thing",
    "fill fills filled filling": "thing",
    "pack packs packed packing": "thing food",
    "wrap wraps wrapped wrapping": "thing food",
    "drive drives drove driving": "vehicle",
    "ride rides rode riding": "vehicle animal",
    "repair repairs repaired repairing": "thing vehicle",
    "leave leaves left leaving": "place thing",
    "reach reaches reached reaching": "place",
    "explore explores explored exploring": "place",
    "cross crosses crossed crossing": "place",
    "love loves loved loving": "person animal food place",
    "want wants wanted wanting": "thing food vehicle",
    "need needs needed needing": "thing food",
    "photograph photographs photographed photographing": "person animal place vehicle",
}
INTRANSITIVE_VERBS = """sleep sleeps slept sleeping|run runs ran running|walk walks walked walking|laugh laughs laughed
laughing|sing sings sang singing|dance dances danced dancing|swim swims swam swimming|jump jumps jumped jumping|smile
smiles smiled smiling|wait waits waited waiting|cry cries cried crying|shout shouts shouted shouting|fall falls fell
falling|sit sits sat sitting|arrive arrives arrived arriving|travel travels traveled traveling|rest rests rested
resting|whisper whispers whispered whispering|cough coughs coughed coughing|sneeze sneezes sneezed sneezing|work works
worked working|play plays played playing|listen listens listened listening|hurry hurries hurried hurrying|wander
wanders wandered wandering|climb climbs climbed climbing|shiver shivers shivered shivering|yawn yawns yawned
yawning|stumble stumbles stumbled stumbling|relax relaxes relaxed relaxing""".split("|")

_NOUN_CATEGORIES = {"person": PERSONS, "animal": ANIMALS, "thing": THINGS, "food": FOODS, "vehicle": VEHICLES}


@dataclasses.dataclass(frozen=True)
class Lexeme:
    """One dictionary entry; every surface form of it lands on the same side of the A/B split."""

    category: str
    forms: tuple[str, ...]
    object_categories: tuple[str, ...] = ()


def _noun_lexeme(category: str, entry: str) -> Lexeme:
    singular, _, plural = entry.partition(":")
    return Lexeme(category, (singular, plural or singular + "s"))


def build_lexicon() -> tuple[Lexeme, ...]:
    """All content lexemes, in a fixed order (the A/B split depends on it)."""
    lexemes = [_noun_lexeme(category, entry) for category, words in _NOUN_CATEGORIES.items() for entry in words]
    single_form = {
        "mass_food": MASS_FOODS,
        "place": PLACES,
        "city": CITIES,
        "name": NAMES,
        "adjective": ADJECTIVES,
        "adverb": ADVERBS,
        "weekday": WEEKDAYS,
        "month": MONTHS,
        "day_part": DAY_PARTS,
        "number": NUMBERS,
    }
    lexemes += [Lexeme(category, (word,)) for category, words in single_form.items() for word in words]
    lexemes += [Lexeme("verb_t", tuple(forms.split()), tuple(objs.split())) for forms, objs in TRANSITIVE_VERBS.items()]
    lexemes += [Lexeme("verb_i", tuple(forms.split())) for forms in INTRANSITIVE_VERBS]
    surface_owner: dict[str, Lexeme] = {word: Lexeme("function", (word,)) for word in FUNCTION_WORDS}
    for lexeme in lexemes:
        for word in set(lexeme.forms):
            if word in surface_owner:
                raise ValueError(f"word {word!r} belongs to both {surface_owner[word]} and {lexeme}; make it unique")
            surface_owner[word] = lexeme
    return tuple(lexemes)


@dataclasses.dataclass(frozen=True)
class VocabularySplit:
    """Vocabulary A (paired-data words, function words included) and B (content words seen only as text/speech)."""

    a: frozenset[str]
    b: frozenset[str]
    b_lexemes: frozenset[Lexeme]

    def to_json(self) -> dict[str, list[str]]:
        return {"A": sorted(self.a), "B": sorted(self.b)}


def split_vocabulary(seed: int, b_fraction: float = 0.17) -> VocabularySplit:
    """Puts round(b_fraction * n) lexemes of every content category into B, deterministically given `seed`.

    Stratifying by category keeps every grammar slot fillable from A alone.
    """
    rng = random.Random(f"vocabulary-split-{seed}")
    lexicon = build_lexicon()
    b_lexemes = set()
    for category in dict.fromkeys(lexeme.category for lexeme in lexicon):
        members = [lexeme for lexeme in lexicon if lexeme.category == category]
        b_lexemes.update(rng.sample(members, round(b_fraction * len(members))))
    b_words = {word for lexeme in b_lexemes for word in lexeme.forms}
    a_words = set(FUNCTION_WORDS) | {word for lexeme in lexicon if lexeme not in b_lexemes for word in lexeme.forms}
    return VocabularySplit(a=frozenset(a_words), b=frozenset(b_words), b_lexemes=frozenset(b_lexemes))


def _with_article(words: list[str]) -> list[str]:
    article = "an" if words[0][0] in "aeiou" or words[0] in ("honest",) else "a"
    return [article, *words]


class SentenceGenerator:
    """Draws sentences from the grammar using only lexemes in `lexemes` (plus function words).

    Args:
      lexemes: content lexemes the sentences may use (e.g. all of them, or only those of vocabulary A).
      rng: the source of randomness; the generator is deterministic given its state.
      min_words / max_words: inclusive sentence length bounds in words (sentences outside are redrawn).
    """

    def __init__(self, lexemes: Iterable[Lexeme], rng: random.Random, min_words: int = 3, max_words: int = 12):
        if not 3 <= min_words <= max_words:
            raise ValueError(f"need 3 <= min_words <= max_words, got min_words={min_words}, max_words={max_words}")
        self.rng = rng
        self.min_words, self.max_words = min_words, max_words
        self.by_category: dict[str, list[Lexeme]] = {}
        for lexeme in lexemes:
            self.by_category.setdefault(lexeme.category, []).append(lexeme)
        missing = {lexeme.category for lexeme in build_lexicon()} - set(self.by_category)
        if missing:
            raise ValueError(f"no lexeme left in categories {sorted(missing)}; lower b_fraction")
        self.templates: tuple[Callable[[], list[str]], ...] = (
            self._transitive_clause,
            self._transitive_clause,
            self._transitive_clause,
            self._intransitive_clause,
            self._intransitive_clause,
            self._there_is,
            self._description,
            self._pair_of_names,
            self._because,
            self._when,
            self._giving,
            self._travel,
        )

    def sentence(self) -> str:
        """One sentence of min_words..max_words lower-case words separated by single spaces."""
        while True:
            words = self.rng.choice(self.templates)()
            if self.min_words <= len(words) <= self.max_words:
                return " ".join(words)

    def _pick(self, category: str) -> Lexeme:
        return self.rng.choice(self.by_category[category])

    def _chance(self, probability: float) -> bool:
        return self.rng.random() < probability

    def _noun_phrase(self, category: str) -> tuple[list[str], bool]:
        """Returns (words, is_plural) for a noun of `category` with a determiner and maybe an adjective."""
        if category == "food" and self._chance(0.3):
            return [self.rng.choice(("some", "the", "my", "her")), self._pick("mass_food").forms[0]], False
        noun = self._pick(category)
        adjectives = [self._pick("adjective").forms[0]] if self._chance(0.4) else []
        roll = self.rng.random()
        if roll < 0.45:
            determiner = self.rng.choice(("the", "the", "this", "that", "my", "your", "his", "her", "our", "their"))
            return [determiner, *adjectives, noun.forms[0]], False
        if roll < 0.65:
            return _with_article([*adjectives, noun.forms[0]]), False
        if roll < 0.85:
            return [
                self.rng.choice(("the", "these", "those", "some", "our", "their")),
                *adjectives,
                noun.forms[1],
            ], True
        return [self._pick("number").forms[0], *adjectives, noun.forms[1]], True

    def _subject(self) -> tuple[list[str], bool]:
        roll = self.rng.random()
        if roll < 0.25:
            return [self._pick("name").forms[0]], False
        if roll < 0.35:
            pronoun = self.rng.choice(("he", "she", "we", "they", "you"))
            return [pronoun], pronoun not in ("he", "she")
        return self._noun_phrase("animal" if roll < 0.5 else "person")

    def _verb_group(self, verb: Lexeme, plural: bool) -> list[str]:
        """A tensed verb agreeing with the subject: past, present, progressive or modal + base."""
        base, third_person, past, progressive = verb.forms
        roll = self.rng.random()
        if roll < 0.4:
            return [past]
        if roll < 0.6:
            return [base if plural else third_person]
        if roll < 0.8:
            auxiliary = self.rng.choice(("were", "are") if plural else ("was", "is"))
            return [auxiliary, progressive]
        return [self.rng.choice(("will", "can", "could", "should", "might", "must")), base]

    def _object(self, verb: Lexeme) -> list[str]:
        category = self.rng.choice(verb.object_categories)
        if category == "place":
            return ["the", self._pick("place").forms[0]]
        if category == "person" and self._chance(0.3):
            return [self._pick("name").forms[0]]
        return self._noun_phrase(category)[0]

    def _place_phrase(self) -> list[str]:
        preposition = self.rng.choice(
            ("in", "at", "near", "under", "behind", "beside", "inside", "across", "through", "into")
        )
        return [preposition, "the", self._pick("place").forms[0]]

    def _time_phrase(self) -> list[str]:
        roll = self.rng.random()
        if roll < 0.4:
            return ["on", self._pick("weekday").forms[0]]
        if roll < 0.7:
            return ["in", self._pick("month").forms[0]]
        return [self.rng.choice(("in", "during")), "the", self._pick("day_part").forms[0]]

    def _optional_tail(self) -> list[str]:
        tail = self._place_phrase() if self._chance(0.35) else []
        return tail + self._time_phrase() if self._chance(0.25) else tail

    def _transitive_clause(self) -> list[str]:
        subject, plural = self._subject()
        verb = self._pick("verb_t")
        return subject + self._verb_group(verb, plural) + self._object(verb) + self._optional_tail()

    def _intransitive_clause(self) -> list[str]:
        subject, plural = self._subject()
        adverb = [self._pick("adverb").forms[0]] if self._chance(0.5) else []
        return subject + self._verb_group(self._pick("verb_i"), plural) + adverb + self._optional_tail()

    def _there_is(self) -> list[str]:
        noun, plural = self._noun_phrase(self.rng.choice(("animal", "thing", "food", "vehicle", "person")))
        verb = self.rng.choice(("are", "were") if plural else ("is", "was"))
        if noun[0] in ("the", "this", "that", "these", "those", "my", "your", "his", "her", "our", "their"):
            noun = _with_article(noun[1:]) if not plural else ["some", *noun[1:]]
        return ["there", verb, *noun, *self._place_phrase()]

    def _description(self) -> list[str]:
        subject, plural = self._noun_phrase(self.rng.choice(("animal", "thing", "food", "vehicle", "person")))
        verb = self.rng.choice(("are", "were") if plural else ("is", "was"))
        adjectives = [self._pick("adjective").forms[0]]
        if self._chance(0.4):
            adjectives += ["and", self._pick("adjective").forms[0]]
        intensifier = [self.rng.choice(("very", "too", "not"))] if self._chance(0.3) else []
        return subject + [verb, *intensifier, *adjectives]

    def _pair_of_names(self) -> list[str]:
        first, second = self._pick("name").forms[0], self._pick("name").forms[0]
        partner = [second] if second != first else ["their", self._pick("person").forms[0]]
        return [first, "and", *partner, self._pick("verb_i").forms[2], *self._optional_tail()]

    def _because(self) -> list[str]:
        subject, _ = self._subject()
        reason_subject, reason_plural = self._subject()
        verb_to_be = "were" if reason_plural else "was"
        adjective = self._pick("adjective").forms[0]
        return [*subject, self._pick("verb_i").forms[2], "because", *reason_subject, verb_to_be, adjective]

    def _when(self) -> list[str]:
        first_subject, _ = self._subject()
        second_subject, _ = self._subject()
        intransitive, transitive = self._pick("verb_i"), self._pick("verb_t")
        clause = ["when", *first_subject, intransitive.forms[2]]
        return [*clause, *second_subject, transitive.forms[2], *self._object(transitive)]

    def _giving(self) -> list[str]:
        subject, plural = self._subject()
        gift = self._noun_phrase(self.rng.choice(("thing", "food")))[0]
        give = self.rng.choice((["gave"], ["will", "give"], ["give" if plural else "gives"]))
        return subject + give + gift + ["to", self._pick("name").forms[0]]

    def _travel(self) -> list[str]:
        subject, plural = self._subject()
        go = self.rng.choice(
            (["went"], ["will", "go"], ["go" if plural else "goes"], ["were" if plural else "was", "going"])
        )
        vehicle = ["by", self._pick("vehicle").forms[0]] if self._chance(0.3) else []
        time_phrase = self._time_phrase() if self._chance(0.3) else []
        return [*subject, *go, "to", self._pick("city").forms[0], *vehicle, *time_phrase]


# Which words each split may use: "A" (vocabulary A only), "AB" (anything), "needs_B" (A ∪ B, at least one B word).
SPLIT_VOCABULARY: Mapping[str, str] = {
    "dev": "A",
    "test_in_vocab": "A",
    "test_text_only_vocab": "needs_B",
    "paired_train": "A",
    "speech_train": "AB",
    "text_train": "AB",
}


def plan_texts(
    counts: Mapping[str, int], vocabulary: VocabularySplit, seed: int, min_words: int, max_words: int
) -> dict[str, list[str]]:
    """Draws `counts[split]` distinct sentences per split, each obeying SPLIT_VOCABULARY; no sentence repeats across
    splits (evaluation splits are drawn first so training never contains an evaluation sentence).
    """
    lexicon = build_lexicon()
    a_lexemes = [lexeme for lexeme in lexicon if lexeme not in vocabulary.b_lexemes]
    seen: set[str] = set()
    texts = {}
    for split, rule in SPLIT_VOCABULARY.items():
        if split not in counts:
            continue
        rng = random.Random(f"sentences-{seed}-{split}")
        generator = SentenceGenerator(a_lexemes if rule == "A" else lexicon, rng, min_words, max_words)
        sentences: list[str] = []
        attempts = 0
        while len(sentences) < counts[split]:
            attempts += 1
            if attempts > 50 * counts[split] + 1000:
                raise RuntimeError(f"could not draw {counts[split]} distinct sentences for {split}; widen max_words")
            sentence = generator.sentence()
            if sentence in seen or (rule == "needs_B" and not vocabulary.b.intersection(sentence.split())):
                continue
            seen.add(sentence)
            sentences.append(sentence)
        texts[split] = sentences
    return texts


def words_outside(text: str, allowed: frozenset[str]) -> list[str]:
    """The words of `text` that are not in `allowed`, in order."""
    return [word for word in text.split() if word not in allowed]
