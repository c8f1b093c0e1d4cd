"""Build the concise-vs-rambling data: preference pairs, prompts, held-out prompts, a chatty SFT set.

Files written next to this script:

* ``concise_pairs.jsonl``: preference pairs for DPO, ORPO, SimPO and the reward model, two per
  question: the concise answer chosen over the same answer in a chatty wrapper, and over a
  rambling version;
* ``concise_prompts.jsonl``: the same questions, prompt only, for PPO;
* ``concise_eval.jsonl``: 30 held-out questions (never in training) for the quality table;
* ``chatty_sft.jsonl``: the SFT parent's data: the same questions answered inside a polite wrapper
  ("Sure! Happy to help with that. Paris. I hope this helps! ..."), a deliberately chatty
  assistant for the preference methods to make concise.

Every question and its short answer below was written by hand for this project. The rejected
answer of a pair says the *same* correct thing wrapped in hand-written padding (an opener that
praises the question, a restatement, a tangent, a closing offer), so the only preference the data
teaches is concision, not correctness. The padding pieces are combined with a fixed seed, so
running this script again rewrites identical files::

    .venv/bin/python recipes/data/build_concise.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

QA = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of Japan?", "Tokyo."),
    ("What is the capital of Canada?", "Ottawa."),
    ("What is the capital of Australia?", "Canberra."),
    ("What is the capital of Italy?", "Rome."),
    ("What is the capital of Egypt?", "Cairo."),
    ("What is the largest planet in the solar system?", "Jupiter."),
    ("Which planet is closest to the Sun?", "Mercury."),
    ("Which planet is known as the Red Planet?", "Mars."),
    ("How many planets are in the solar system?", "Eight."),
    ("What is the boiling point of water at sea level?", "100 °C (212 °F)."),
    ("What is the freezing point of water in Celsius?", "0 °C."),
    ("What gas do plants absorb from the air?", "Carbon dioxide."),
    ("What gas do humans need to breathe?", "Oxygen."),
    ("What is the chemical symbol for gold?", "Au."),
    ("What is the chemical symbol for sodium?", "Na."),
    ("What is H2O?", "Water: two hydrogen atoms and one oxygen atom."),
    ("How many legs does a spider have?", "Eight."),
    ("How many legs does an insect have?", "Six."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean."),
    ("What is the longest river in the world?", "The Nile, by most measurements."),
    ("What is the tallest mountain on Earth?", "Mount Everest, about 8,849 m."),
    ("How many days are in a leap year?", "366."),
    ("How many minutes are in an hour?", "60."),
    ("How many hours are in a day?", "24."),
    ("How many sides does a hexagon have?", "Six."),
    ("How many sides does a triangle have?", "Three."),
    ("What is 7 times 8?", "56."),
    ("What is 12 plus 15?", "27."),
    ("What is the square root of 81?", "9."),
    ("What is 100 divided by 4?", "25."),
    ("What is half of 50?", "25."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("Who developed the theory of relativity?", "Albert Einstein."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong, in 1969."),
    ("In which year did World War II end?", "1945."),
    ("What language is spoken in Brazil?", "Portuguese."),
    ("What currency is used in Japan?", "The yen."),
    ("What is the smallest prime number?", "2."),
    ("Is 15 a prime number?", "No, 15 = 3 × 5."),
    ("What is the opposite of hot?", "Cold."),
    ("What is the plural of mouse?", "Mice."),
    ("What is a synonym for happy?", "Glad."),
    ("What color do you get by mixing blue and yellow?", "Green."),
    ("What color do you get by mixing red and white?", "Pink."),
    ("What is the main ingredient of guacamole?", "Avocado."),
    ("What do bees make?", "Honey."),
    ("What is the fastest land animal?", "The cheetah."),
    ("What is the largest mammal?", "The blue whale."),
    ("Where do penguins mostly live?", "In the Southern Hemisphere, mainly Antarctica."),
    ("What organ pumps blood through the body?", "The heart."),
    ("How many bones are in the adult human body?", "206."),
    ("What vitamin does sunlight help the body make?", "Vitamin D."),
    ("What is the hardest natural substance?", "Diamond."),
    ("What does a thermometer measure?", "Temperature."),
    ("What does a barometer measure?", "Air pressure."),
    ("What is the speed of light?", "About 300,000 km per second."),
    ("What force keeps us on the ground?", "Gravity."),
    ("What is photosynthesis?", "How plants turn light, water and CO2 into sugar and oxygen."),
    ("What is the capital of Germany?", "Berlin."),
    ("What is the capital of Spain?", "Madrid."),
    ("What is the capital of Kenya?", "Nairobi."),
    ("What continent is Argentina in?", "South America."),
    ("What continent is Nigeria in?", "Africa."),
    (
        "How do I boil an egg?",
        "Simmer it in boiling water for 7-9 minutes, then cool it in cold water.",
    ),
    ("How do I make tea?", "Pour boiling water over a tea bag and steep for 3-5 minutes."),
    (
        "How can I fall asleep faster?",
        "Keep a fixed bedtime, a dark cool room, and no screens for an hour before.",
    ),
    (
        "How do I remove a coffee stain?",
        "Blot it, then rinse from the back with cold water and a little dish soap.",
    ),
    (
        "How often should I water a cactus?",
        "About every 2-3 weeks; let the soil dry out fully in between.",
    ),
    ("How do I convert Celsius to Fahrenheit?", "Multiply by 9/5 and add 32."),
    (
        "How do I reverse a list in Python?",
        "Use my_list.reverse() in place, or my_list[::-1] for a copy.",
    ),
    ("How do I read a file in Python?", "with open(path) as f: text = f.read()"),
    ("How do I check the Python version?", "Run python --version."),
    ("What does HTML stand for?", "HyperText Markup Language."),
    ("What does CPU stand for?", "Central Processing Unit."),
    ("What does RAM stand for?", "Random Access Memory."),
    ("What is a byte?", "Eight bits."),
    ("What is an API?", "A defined way for programs to talk to each other."),
    ("How do I undo the last git commit but keep the changes?", "git reset --soft HEAD~1"),
    ("How do I list files in a folder on Linux?", "ls"),
    ("How do I make a new folder on Linux?", "mkdir NAME"),
    ("What is a good way to save money?", "Set aside a fixed amount automatically each payday."),
    ("How do I stay hydrated?", "Drink water regularly through the day, more when hot or active."),
    ("How long should I brush my teeth?", "Two minutes, twice a day."),
    ("What is a haiku?", "A three-line poem of 5, 7 and 5 syllables."),
    ("What is a noun?", "A word that names a person, place, thing or idea."),
    ("What is a verb?", "A word for an action or state, like run or be."),
    ("Give me a word that rhymes with cat.", "Hat."),
    ("Translate hello into Spanish.", "Hola."),
    ("Translate thank you into French.", "Merci."),
    ("What is the past tense of go?", "Went."),
    ("Spell the number 12 in words.", "Twelve."),
    ("What day comes after Monday?", "Tuesday."),
    ("What month comes after June?", "July."),
    ("How many weeks are in a year?", "52."),
    ("How many continents are there?", "Seven."),
    ("What is the largest country by area?", "Russia."),
    (
        "What is the most spoken language in the world?",
        "English, counting second-language speakers; Mandarin by native speakers.",
    ),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red (Rayleigh scattering)."),
    (
        "Why do we have seasons?",
        "Earth's axis is tilted, so each hemisphere's sunlight changes over the year.",
    ),
    ("What causes tides?", "Mainly the Moon's gravity pulling on the oceans."),
    (
        "Why do leaves change color in autumn?",
        "Chlorophyll breaks down, revealing yellow and red pigments.",
    ),
    ("What is inflation?", "A general rise in prices, so money buys less."),
    ("What is a recession?", "A broad decline in economic activity lasting months."),
    ("What is democracy?", "Government by the people, usually through elected representatives."),
    ("Suggest a name for a pet goldfish.", "Bubbles."),
    ("Suggest a healthy snack.", "An apple with a handful of nuts."),
    ("Recommend a classic novel.", "Pride and Prejudice by Jane Austen."),
    ("What should I pack for a beach day?", "Sunscreen, water, a towel, a hat and snacks."),
    ("How do I say no politely?", "Thank them, say no clearly, and skip long excuses."),
    ("What is a good first programming language?", "Python."),
    ("Is a tomato a fruit or a vegetable?", "Botanically a fruit; in cooking, a vegetable."),
    ("Can you name a primary color?", "Red."),
    ("What shape has four equal sides and four right angles?", "A square."),
    ("What is the perimeter of a square with side 3?", "12."),
    ("What is the area of a rectangle 4 by 5?", "20."),
    ("What is 9 squared?", "81."),
    ("What is 15 minus 7?", "8."),
]

# Held-out questions with the word(s) a correct answer contains (empty: open-ended), so the
# quality table can show that concision did not cost the content.
EVAL_PROMPTS = [
    ("What is the capital of Norway?", ["Oslo"]),
    ("Which planet has the most famous rings?", ["Saturn"]),
    ("What is the chemical symbol for iron?", ["Fe"]),
    ("How many legs does a dog have?", ["four", "4"]),
    ("Who wrote Hamlet?", ["Shakespeare"]),
    ("What is 6 times 7?", ["42"]),
    ("What language is spoken in Mexico?", ["Spanish"]),
    ("What is the largest desert in the world?", ["Sahara", "Antarctic"]),
    ("How do I cook rice?", []),
    ("How do I sort a list in Python?", ["sort"]),
    ("What does USB stand for?", ["Universal Serial Bus"]),
    ("What is the past tense of eat?", ["ate"]),
    ("Why do cats purr?", []),
    ("What is gravity?", []),
    ("Suggest a name for a puppy.", []),
    ("How do I make my phone battery last longer?", []),
    ("What is the capital of Portugal?", ["Lisbon"]),
    ("How many seconds are in a minute?", ["60", "sixty"]),
    ("What is the main ingredient in bread?", ["flour"]),
    ("What is a volcano?", []),
    ("What do caterpillars turn into?", ["butterfl", "moth"]),
    ("Translate goodbye into Italian.", ["arrivederci", "ciao"]),
    ("What is the square root of 49?", ["7", "seven"]),
    ("How do I stay focused while studying?", []),
    ("What is the largest bird?", ["ostrich"]),
    ("What does DNA stand for?", ["deoxyribonucleic"]),
    ("Recommend a board game for a family.", []),
    ("What is a rainbow?", []),
    ("How can I learn to cook?", []),
    ("What is the capital of Greece?", ["Athens"]),
]

OPENERS = [
    "What a great question! I'm really glad you asked about this, because it's something a lot of people wonder about.",
    "Great question! This is actually a really interesting topic, and I'd be happy to help you with it.",
    "Thank you so much for asking! Let me take a moment to think about this carefully before I answer.",
    "Oh, that's a wonderful question, and there is quite a lot that could be said about it.",
    "Absolutely, I'd love to help with that! It's one of those things that seems simple but is worth thinking through.",
    "Sure thing! Before I get to the answer, let me give you a little bit of context first.",
]
RESTATE = [
    'So, you want to know: "{q}" That\'s a very reasonable thing to want to know.',
    'You\'re asking "{q}", and that is something I can definitely help you understand.',
    'To restate your question so we\'re on the same page: "{q}"',
]
LEADINS = [
    "After considering all of this, the answer is basically:",
    "Well, to put it simply, and I do want to keep it simple for you:",
    "So, after all that, what it comes down to is this:",
    "The short version, if I had to summarise it, would be:",
]
TANGENTS = [
    "Of course, there are many other related things that could also be interesting to explore, and people have different opinions about many of them.",
    "It's also worth remembering that learning new facts every day is a great habit, and curiosity is a wonderful thing to have.",
    "Interestingly, questions like this often lead to even more questions, which is part of what makes learning so much fun.",
    "There is a lot of history and background behind this, which could fill a whole book if we really wanted to go into it.",
]
CLOSERS = [
    "I hope this helps! Let me know if you have any other questions, I'm always happy to help with anything else you need.",
    "I hope that answers your question! Feel free to ask me anything else, and have a wonderful day!",
    "Please don't hesitate to reach out if you'd like me to explain any part of this in more detail!",
    "Let me know if there's anything else at all I can help you with, big or small!",
]


CHATTY_OPENERS = [
    "Sure! Happy to help with that.",
    "Great question!",
    "Of course! Here is what I know.",
    "Absolutely, let me help you with this.",
]
CHATTY_CLOSERS = [
    "I hope this helps! Let me know if you have any other questions.",
    "Feel free to ask if you would like more details!",
    "I hope that answers your question. Have a wonderful day!",
]


def chatty(answer: str, rng: random.Random) -> str:
    return f"{rng.choice(CHATTY_OPENERS)} {answer} {rng.choice(CHATTY_CLOSERS)}"


def ramble(question: str, answer: str, rng: random.Random) -> str:
    parts = [
        rng.choice(OPENERS),
        rng.choice(RESTATE).format(q=question),
        rng.choice(LEADINS),
        answer,
        rng.choice(TANGENTS),
        rng.choice(CLOSERS),
    ]
    return " ".join(parts)


def main() -> None:
    rng = random.Random(6)
    with open(HERE / "concise_pairs.jsonl", "w") as f:
        for question, answer in QA:
            # Two pairs per question: against the chatty wrapper (what the SFT parent says) and
            # against full rambling. The first keeps the preference on the parent's own
            # behaviour; alone, the second is separated in a few steps by the rambling's length
            # and DPO's loss saturates before the parent's wrapper is touched.
            for rejected in (chatty(answer, rng), ramble(question, answer, rng)):
                row = {
                    "prompt": [{"role": "user", "content": question}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "concise_prompts.jsonl", "w") as f:
        for question, _ in QA:
            f.write(json.dumps({"prompt": [{"role": "user", "content": question}]}) + "\n")
    sft_rng = random.Random(7)
    with open(HERE / "chatty_sft.jsonl", "w") as f:
        for question, answer in QA:
            row = {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": chatty(answer, sft_rng)}],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "concise_eval.jsonl", "w") as f:
        for question, keywords in EVAL_PROMPTS:
            row = {"prompt": [{"role": "user", "content": question}], "keywords": keywords}
            f.write(json.dumps(row) + "\n")
    seen = {q for q, _ in QA}
    overlap = seen & {q for q, _ in EVAL_PROMPTS}
    if overlap:
        raise SystemExit(f"held-out prompts leak into training: {sorted(overlap)!r}")
    print(f"{2 * len(QA)} pairs, {len(EVAL_PROMPTS)} held-out prompts")


if __name__ == "__main__":
    main()
