"""Build the concise-vs-rambling data: preference pairs, thumbs, prompts, held-out prompts, a chatty SFT set.

Files written next to this script:

* ``concise_pairs.jsonl``: preference pairs for DPO, ORPO, SimPO and the reward model, two per
  question: the concise answer chosen over the same answer in a chatty wrapper, and over a
  rambling version;
* ``concise_thumbs.jsonl``: the same answers unpaired, for KTO: each question's concise answer
  once with ``label: true`` (a thumb up), each of its two padded answers with ``label: false``;
* ``concise_prompts.jsonl``: the same questions, prompt only, for PPO;
* ``concise_eval.jsonl``: 30 held-out questions (never in training) for the quality table;
* ``chatty_sft.jsonl``: the SFT parent's data: the same questions answered inside a polite wrapper
  ("Sure! Happy to help with that. The capital of France is Paris. I hope this helps! ..."), a
  deliberately chatty assistant for the preference methods to make concise.

Every question and its answer below was written by hand for this project. Each answer is one
sentence that restates the question and names the fact ("The capital of France is Paris.", not
"Paris."): that is how the base itself answers, so the chatty parent learns only the padding
around a sentence the base would say anyway and keeps naming the fact on new questions (trained
on bare one-word answers, the parent had learnt a handful of frequent words, "Eight." among them,
and named the expected fact in 10-15 % of held-out answers against the base's 65 %). The
rejected answer of a pair says the *same* sentence wrapped in hand-written padding (an opener
that praises the question, a restatement, a tangent, a closing offer), so the only preference
the data teaches is concision, not correctness. The padding pieces are combined with a fixed
seed, so running this script again rewrites identical files::

    .venv/bin/python recipes/data/build_concise.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the largest planet in the solar system?", "The largest planet in the solar system is Jupiter."),
    ("Which planet is closest to the Sun?", "The planet closest to the Sun is Mercury."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("How many planets are in the solar system?", "There are eight planets in the solar system."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 °C (212 °F) at sea level."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 °C."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("What gas do humans need to breathe?", "Humans need oxygen to breathe."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na."),
    ("What is H2O?", "H2O is water: two hydrogen atoms and one oxygen atom."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
    ("What is the longest river in the world?", "The longest river in the world is the Nile, by most measurements."),
    ("What is the tallest mountain on Earth?", "The tallest mountain on Earth is Mount Everest, about 8,849 m."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("What is 12 plus 15?", "12 plus 15 is 27."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
    ("What is half of 50?", "Half of 50 is 25."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon, in 1969."),
    ("In which year did World War II end?", "World War II ended in 1945."),
    ("What language is spoken in Brazil?", "The language spoken in Brazil is Portuguese."),
    ("What currency is used in Japan?", "Japan uses the yen."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("Is 15 a prime number?", "No, 15 is not prime: 15 = 3 × 5."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What is the plural of mouse?", "The plural of mouse is mice."),
    ("What is a synonym for happy?", "A synonym for happy is glad."),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("What color do you get by mixing red and white?", "Mixing red and white gives pink."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("What do bees make?", "Bees make honey."),
    ("What is the fastest land animal?", "The fastest land animal is the cheetah."),
    ("What is the largest mammal?", "The largest mammal is the blue whale."),
    ("Where do penguins mostly live?", "Penguins mostly live in the Southern Hemisphere, mainly Antarctica."),
    ("What organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("How many bones are in the adult human body?", "The adult human body has 206 bones."),
    ("What vitamin does sunlight help the body make?", "Sunlight helps the body make vitamin D."),
    ("What is the hardest natural substance?", "The hardest natural substance is diamond."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What does a barometer measure?", "A barometer measures air pressure."),
    ("What is the speed of light?", "The speed of light is about 300,000 km per second."),
    ("What force keeps us on the ground?", "Gravity keeps us on the ground."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and CO2 into sugar and oxygen."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("What continent is Argentina in?", "Argentina is in South America."),
    ("What continent is Nigeria in?", "Nigeria is in Africa."),
    (
        "How do I boil an egg?",
        "Simmer the egg in boiling water for 7-9 minutes, then cool it in cold water.",
    ),
    ("How do I make tea?", "Pour boiling water over a tea bag and steep it for 3-5 minutes."),
    (
        "How can I fall asleep faster?",
        "Keep a fixed bedtime, a dark cool room, and no screens for an hour before bed.",
    ),
    (
        "How do I remove a coffee stain?",
        "Blot the stain, then rinse it from the back with cold water and a little dish soap.",
    ),
    (
        "How often should I water a cactus?",
        "Water a cactus about every 2-3 weeks and let the soil dry out fully in between.",
    ),
    ("How do I convert Celsius to Fahrenheit?", "To convert Celsius to Fahrenheit, multiply by 9/5 and add 32."),
    (
        "How do I reverse a list in Python?",
        "Use my_list.reverse() to reverse a list in place, or my_list[::-1] for a reversed copy.",
    ),
    ("How do I read a file in Python?", "Open the file and read it: with open(path) as f: text = f.read()"),
    ("How do I check the Python version?", "Run python --version to check the Python version."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("What does CPU stand for?", "CPU stands for Central Processing Unit."),
    ("What does RAM stand for?", "RAM stands for Random Access Memory."),
    ("What is a byte?", "A byte is eight bits."),
    ("What is an API?", "An API is a defined way for programs to talk to each other."),
    ("How do I undo the last git commit but keep the changes?", "Run git reset --soft HEAD~1 to undo the last commit and keep the changes."),
    ("How do I list files in a folder on Linux?", "Run ls to list the files in a folder on Linux."),
    ("How do I make a new folder on Linux?", "Run mkdir NAME to make a new folder on Linux."),
    ("What is a good way to save money?", "A good way to save money is to set aside a fixed amount automatically each payday."),
    ("How do I stay hydrated?", "Drink water regularly through the day, and more when it is hot or you are active."),
    ("How long should I brush my teeth?", "Brush your teeth for two minutes, twice a day."),
    ("What is a haiku?", "A haiku is a three-line poem of 5, 7 and 5 syllables."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea."),
    ("What is a verb?", "A verb is a word for an action or state, like run or be."),
    ("Give me a word that rhymes with cat.", "Hat rhymes with cat."),
    ("Translate hello into Spanish.", "Hello in Spanish is hola."),
    ("Translate thank you into French.", "Thank you in French is merci."),
    ("What is the past tense of go?", "The past tense of go is went."),
    ("Spell the number 12 in words.", "The number 12 in words is twelve."),
    ("What day comes after Monday?", "Tuesday comes after Monday."),
    ("What month comes after June?", "July comes after June."),
    ("How many weeks are in a year?", "A year has 52 weeks."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the largest country by area?", "The largest country by area is Russia."),
    (
        "What is the most spoken language in the world?",
        "The most spoken language is English counting second-language speakers, and Mandarin by native speakers.",
    ),
    ("Why is the sky blue?", "The sky is blue because air scatters blue sunlight more than red (Rayleigh scattering)."),
    (
        "Why do we have seasons?",
        "We have seasons because Earth's axis is tilted, so each hemisphere's sunlight changes over the year.",
    ),
    ("What causes tides?", "Tides are caused mainly by the Moon's gravity pulling on the oceans."),
    (
        "Why do leaves change color in autumn?",
        "Leaves change color in autumn because chlorophyll breaks down, revealing yellow and red pigments.",
    ),
    ("What is inflation?", "Inflation is a general rise in prices, so money buys less."),
    ("What is a recession?", "A recession is a broad decline in economic activity lasting months."),
    ("What is democracy?", "Democracy is government by the people, usually through elected representatives."),
    ("Suggest a name for a pet goldfish.", "A good name for a pet goldfish is Bubbles."),
    ("Suggest a healthy snack.", "A healthy snack is an apple with a handful of nuts."),
    ("Recommend a classic novel.", "A classic novel to read is Pride and Prejudice by Jane Austen."),
    ("What should I pack for a beach day?", "For a beach day, pack sunscreen, water, a towel, a hat and snacks."),
    ("How do I say no politely?", "To say no politely, thank them, say no clearly, and skip long excuses."),
    ("What is a good first programming language?", "A good first programming language is Python."),
    ("Is a tomato a fruit or a vegetable?", "A tomato is botanically a fruit, and in cooking a vegetable."),
    ("Can you name a primary color?", "Red is a primary color."),
    ("What shape has four equal sides and four right angles?", "A square has four equal sides and four right angles."),
    ("What is the perimeter of a square with side 3?", "The perimeter of a square with side 3 is 12."),
    ("What is the area of a rectangle 4 by 5?", "The area of a rectangle 4 by 5 is 20."),
    ("What is 9 squared?", "9 squared is 81."),
    ("What is 15 minus 7?", "15 minus 7 is 8."),
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
    seen = {q for q, _ in QA}
    overlap = seen & {q for q, _ in EVAL_PROMPTS}
    if overlap:
        raise SystemExit(f"held-out prompts leak into training: {sorted(overlap)!r}")
    rng = random.Random(6)
    pairs = []
    for question, answer in QA:
        # Two pairs per question: against the chatty wrapper (what the SFT parent says) and
        # against full rambling. The first keeps the preference on the parent's own
        # behaviour; alone, the second is separated in a few steps by the rambling's length
        # and DPO's loss saturates before the parent's wrapper is touched.
        for rejected in (chatty(answer, rng), ramble(question, answer, rng)):
            pairs.append({
                "prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": rejected}],
            })
    write("concise_pairs.jsonl", pairs)
    thumbs = []
    for index, pair in enumerate(pairs):
        if index % 2 == 0:  # each question's concise answer once (it is chosen in both pairs)
            thumbs.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        thumbs.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    write("concise_thumbs.jsonl", thumbs)
    write("concise_prompts.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q, _ in QA])
    sft_rng = random.Random(7)
    write("chatty_sft.jsonl", [
        {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": chatty(answer, sft_rng)}],
        }
        for question, answer in QA
    ])
    write("concise_eval.jsonl", [
        {"prompt": [{"role": "user", "content": question}], "keywords": keywords}
        for question, keywords in EVAL_PROMPTS
    ])
    print(f"{len(pairs)} pairs, {len(thumbs)} thumbs, {len(EVAL_PROMPTS)} held-out prompts")


def write(name: str, rows: list[dict[str, object]]) -> None:
    with open(HERE / name, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
