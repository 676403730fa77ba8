"""The demo's sample question bank: four users, Korean and English, several subjects.

Hand-written questions (with rephrased near-duplicates a user typed twice) plus sets built from
small fact tables (capitals, element symbols, SI units, vocabulary, arithmetic), and a history of
attempts in which each user is weak at something, so that the wrong-answer clusters mean
something.  Deterministic: the same bank, ids and attempts on every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Q:
    subject: str
    scope: str
    text: str
    choices: tuple[str, str, str, str]
    correct: int  # 1..4
    explanation: str | None = None
    weak: bool = False  # the user tends to get it wrong
    twin: str | None = None  # the same question typed twice in other words share a twin


@dataclass
class User:
    email: str
    about: str
    questions: list[Q] = field(default_factory=list)


def _mc(rng: random.Random, answer: str, pool: list[str]) -> tuple[tuple[str, str, str, str], int]:
    """Four choices: the answer and three distinct distractors from the pool, shuffled."""
    others = rng.sample([p for p in pool if p != answer], 3)
    choices = [answer, *others]
    rng.shuffle(choices)
    return tuple(choices), choices.index(answer) + 1


# --------------------------------------------------------------------------------------------
# minji: a Korean high-school student (한국사, 생명과학, 수학)
# --------------------------------------------------------------------------------------------

MINJI = [
    Q(
        "한국사",
        "조선 전기",
        "훈민정음을 창제한 왕은 누구인가?",
        ("태조", "세종", "성종", "영조"),
        2,
        "세종은 1443년 훈민정음을 창제하고 1446년 반포하였다.",
        twin="sejong",
    ),
    Q(
        "한국사",
        "조선 전기",
        "한글(훈민정음)을 만든 조선의 임금은?",
        ("태조", "세종", "성종", "영조"),
        2,
        twin="sejong",
    ),
    Q("한국사", "조선 전기", "조선을 건국한 인물은?", ("이성계", "정도전", "이방원", "최영"), 1),
    Q(
        "한국사",
        "조선 전기",
        "조선의 기본 법전으로 성종 때 완성된 것은?",
        ("경국대전", "속대전", "대전통편", "대전회통"),
        1,
    ),
    Q(
        "한국사",
        "조선 후기",
        "임진왜란 때 한산도 대첩을 이끈 장군은?",
        ("권율", "이순신", "김시민", "곽재우"),
        2,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "병자호란이 일어난 해는?",
        ("1592년", "1597년", "1627년", "1636년"),
        4,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "정묘호란이 일어난 해는?",
        ("1592년", "1597년", "1627년", "1636년"),
        3,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "임진왜란이 시작된 해는?",
        ("1592년", "1597년", "1627년", "1636년"),
        1,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "영조가 붕당의 폐해를 줄이려고 실시한 정책은?",
        ("탕평책", "호포법", "균역법", "대동법"),
        1,
    ),
    Q(
        "한국사",
        "조선 후기",
        "공납을 쌀로 내게 한 제도는?",
        ("균역법", "대동법", "영정법", "직전법"),
        2,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "군역의 부담을 1년에 군포 1필로 줄인 제도는?",
        ("균역법", "대동법", "영정법", "직전법"),
        1,
        weak=True,
    ),
    Q(
        "한국사",
        "조선 후기",
        "전세를 풍흉에 관계없이 1결당 4~6두로 고정한 제도는?",
        ("균역법", "대동법", "영정법", "직전법"),
        3,
        weak=True,
    ),
    Q("한국사", "고려", "고려를 세운 왕은?", ("왕건", "궁예", "견훤", "광종"), 1),
    Q("한국사", "고려", "노비안검법을 실시한 고려의 왕은?", ("태조", "광종", "성종", "공민왕"), 2),
    Q("한국사", "고려", "팔만대장경이 보관된 사찰은?", ("불국사", "해인사", "송광사", "부석사"), 2),
    Q("한국사", "근현대", "3·1 운동이 일어난 해는?", ("1910년", "1919년", "1926년", "1945년"), 2),
    Q(
        "한국사",
        "근현대",
        "대한민국 임시 정부가 수립된 도시는?",
        ("베이징", "상하이", "충칭", "블라디보스토크"),
        2,
    ),
    Q(
        "생명과학",
        "세포",
        "광합성이 일어나는 세포 소기관은?",
        ("미토콘드리아", "엽록체", "리보솜", "골지체"),
        2,
        "엽록체의 틸라코이드에서 명반응, 스트로마에서 탄소 고정이 일어난다.",
        twin="chloroplast",
    ),
    Q(
        "생명과학",
        "세포",
        "식물 세포에서 광합성을 담당하는 소기관은 무엇인가?",
        ("미토콘드리아", "엽록체", "리보솜", "골지체"),
        2,
        twin="chloroplast",
    ),
    Q(
        "생명과학",
        "세포",
        "세포 호흡이 주로 일어나는 곳은?",
        ("엽록체", "미토콘드리아", "핵", "액포"),
        2,
    ),
    Q(
        "생명과학",
        "세포",
        "단백질 합성이 일어나는 세포 소기관은?",
        ("리보솜", "리소좀", "골지체", "중심체"),
        1,
    ),
    Q(
        "생명과학",
        "유전",
        "DNA를 구성하는 염기가 아닌 것은?",
        ("아데닌", "구아닌", "우라실", "사이토신"),
        3,
        weak=True,
    ),
    Q(
        "생명과학",
        "유전",
        "RNA에만 있는 염기는?",
        ("아데닌", "티민", "우라실", "구아닌"),
        3,
        weak=True,
    ),
    Q("생명과학", "유전", "사람의 체세포 염색체 수는?", ("23개", "44개", "46개", "48개"), 3),
    Q(
        "생명과학",
        "항상성",
        "혈당량을 낮추는 호르몬은?",
        ("글루카곤", "인슐린", "아드레날린", "티록신"),
        2,
    ),
    Q(
        "생명과학",
        "항상성",
        "혈당량을 높이는 호르몬은?",
        ("글루카곤", "인슐린", "옥시토신", "티록신"),
        1,
    ),
    Q("수학", "지수와 로그", "log₂ 8의 값은?", ("2", "3", "4", "8"), 2),
    Q("수학", "지수와 로그", "2의 10제곱은?", ("512", "1000", "1024", "2048"), 3),
    Q("수학", "삼각함수", "sin 30°의 값은?", ("1/2", "√2/2", "√3/2", "1"), 1, weak=True),
    Q("수학", "삼각함수", "cos 60°의 값은?", ("1/2", "√2/2", "√3/2", "0"), 1, weak=True),
    Q("수학", "삼각함수", "tan 45°의 값은?", ("0", "1/2", "1", "√3"), 3, weak=True),
    Q("수학", "수열", "첫째항이 2, 공비가 3인 등비수열의 제4항은?", ("18", "24", "54", "162"), 3),
    Q("수학", "수열", "첫째항이 3, 공차가 4인 등차수열의 제10항은?", ("36", "39", "40", "43"), 2),
    Q("수학", "확률", "주사위 한 개를 던져 짝수가 나올 확률은?", ("1/6", "1/3", "1/2", "2/3"), 3),
    Q(
        "수학",
        "확률",
        "동전 두 개를 던져 모두 앞면이 나올 확률은?",
        ("1/8", "1/4", "1/2", "3/4"),
        2,
    ),
    Q("한국사", "고대", "고구려를 세운 인물은?", ("주몽", "온조", "박혁거세", "김수로"), 1),
    Q("한국사", "고대", "백제를 세운 인물은?", ("주몽", "온조", "박혁거세", "김수로"), 2),
    Q("한국사", "고대", "신라를 세운 인물은?", ("주몽", "온조", "박혁거세", "김수로"), 3),
    Q("한국사", "고대", "삼국을 통일한 나라는?", ("고구려", "백제", "신라", "가야"), 3),
    Q("한국사", "고대", "광개토 대왕릉비가 있는 곳은?", ("평양", "경주", "지안(집안)", "공주"), 3),
    Q(
        "생명과학",
        "생태계",
        "생태계에서 생산자에 해당하는 것은?",
        ("토끼", "버섯", "벼", "독수리"),
        3,
    ),
    Q(
        "생명과학",
        "생태계",
        "생태계에서 분해자에 해당하는 것은?",
        ("곰팡이", "사슴", "소나무", "메뚜기"),
        1,
    ),
    Q(
        "지구과학",
        "지구",
        "지구 대기에서 가장 많은 기체는?",
        ("산소", "질소", "아르곤", "이산화 탄소"),
        2,
        twin="nitrogen",
    ),
    Q(
        "지구과학",
        "지구",
        "대기 중에 가장 많이 들어 있는 기체는 무엇인가?",
        ("산소", "질소", "아르곤", "이산화 탄소"),
        2,
        twin="nitrogen",
    ),
    Q("지구과학", "천체", "태양계에서 가장 큰 행성은?", ("토성", "목성", "해왕성", "지구"), 2),
    Q("지구과학", "천체", "태양에서 가장 가까운 행성은?", ("금성", "화성", "수성", "지구"), 3),
    Q("지구과학", "천체", "고리가 가장 뚜렷한 행성은?", ("목성", "토성", "천왕성", "화성"), 2),
]

# --------------------------------------------------------------------------------------------
# alex: general knowledge in English (geography, chemistry, biology, computing)
# --------------------------------------------------------------------------------------------

CAPITALS = {
    "Australia": "Canberra",
    "New Zealand": "Wellington",
    "Fiji": "Suva",
    "Papua New Guinea": "Port Moresby",
    "Samoa": "Apia",
    "Tonga": "Nuku'alofa",
    "Kenya": "Nairobi",
    "Nigeria": "Abuja",
    "Ghana": "Accra",
    "Ethiopia": "Addis Ababa",
    "Morocco": "Rabat",
    "Tanzania": "Dodoma",
    "Senegal": "Dakar",
    "Uganda": "Kampala",
    "Canada": "Ottawa",
    "Brazil": "Brasília",
    "Argentina": "Buenos Aires",
    "Chile": "Santiago",
    "Peru": "Lima",
    "Colombia": "Bogotá",
    "Japan": "Tokyo",
    "South Korea": "Seoul",
    "Vietnam": "Hanoi",
    "Thailand": "Bangkok",
    "Mongolia": "Ulaanbaatar",
    "Turkey": "Ankara",
    "Switzerland": "Bern",
    "Norway": "Oslo",
    "Portugal": "Lisbon",
    "Poland": "Warsaw",
}
WEAK_CAPITALS = {
    "Australia",
    "New Zealand",
    "Fiji",
    "Papua New Guinea",
    "Samoa",
    "Tonga",
    "Nigeria",
    "Tanzania",
    "Morocco",
    "Turkey",
    "Switzerland",
    "Canada",
    "Brazil",
}

ELEMENTS = {
    "iron": "Fe",
    "copper": "Cu",
    "silver": "Ag",
    "gold": "Au",
    "lead": "Pb",
    "tin": "Sn",
    "mercury": "Hg",
    "sodium": "Na",
    "potassium": "K",
    "tungsten": "W",
    "zinc": "Zn",
    "nickel": "Ni",
    "calcium": "Ca",
    "magnesium": "Mg",
    "chlorine": "Cl",
    "sulfur": "S",
    "phosphorus": "P",
    "nitrogen": "N",
    "helium": "He",
    "neon": "Ne",
    "antimony": "Sb",
    "manganese": "Mn",
    "cobalt": "Co",
    "platinum": "Pt",
}
WEAK_ELEMENTS = {
    "lead",
    "tin",
    "mercury",
    "sodium",
    "potassium",
    "tungsten",
    "antimony",
    "silver",
    "gold",
}

ALEX = [
    Q(
        "Biology",
        "Cells",
        "Which organelle is known as the powerhouse of the cell?",
        ("Nucleus", "Mitochondrion", "Ribosome", "Golgi apparatus"),
        2,
        "Mitochondria make most of the cell's ATP by aerobic respiration.",
        twin="powerhouse",
    ),
    Q(
        "Biology",
        "Cells",
        "What organelle is called the cell's powerhouse?",
        ("Nucleus", "Mitochondrion", "Ribosome", "Golgi apparatus"),
        2,
        twin="powerhouse",
    ),
    Q(
        "Biology",
        "Cells",
        "Where does photosynthesis take place in a plant cell?",
        ("Chloroplast", "Mitochondrion", "Vacuole", "Cell wall"),
        1,
    ),
    Q(
        "Biology",
        "Genetics",
        "Which base pairs with adenine in DNA?",
        ("Cytosine", "Guanine", "Thymine", "Uracil"),
        3,
    ),
    Q(
        "Biology",
        "Genetics",
        "How many chromosomes are in a human body cell?",
        ("23", "44", "46", "48"),
        3,
    ),
    Q(
        "Biology",
        "Human body",
        "Which organ produces insulin?",
        ("Liver", "Pancreas", "Kidney", "Spleen"),
        2,
    ),
    Q(
        "Biology",
        "Human body",
        "What is the largest organ of the human body?",
        ("Liver", "Brain", "Skin", "Lungs"),
        3,
    ),
    Q(
        "Geography",
        "World",
        "What is the longest river in Africa?",
        ("Congo", "Niger", "Nile", "Zambezi"),
        3,
    ),
    Q(
        "Geography",
        "World",
        "Which is the largest ocean on Earth?",
        ("Atlantic", "Indian", "Arctic", "Pacific"),
        4,
    ),
    Q(
        "Geography",
        "World",
        "Mount Kilimanjaro is in which country?",
        ("Kenya", "Tanzania", "Uganda", "Ethiopia"),
        2,
        weak=True,
    ),
    Q(
        "Geography",
        "Capitals",
        "Which city is the capital of Australia?",
        ("Sydney", "Melbourne", "Canberra", "Perth"),
        3,
        weak=True,
        twin="canberra",
    ),
    Q(
        "Computer science",
        "Algorithms",
        "What is the average time complexity of binary search?",
        ("O(1)", "O(log n)", "O(n)", "O(n log n)"),
        2,
        twin="bsearch",
    ),
    Q(
        "Computer science",
        "Algorithms",
        "Binary search on a sorted array runs in what time on average?",
        ("O(1)", "O(log n)", "O(n)", "O(n log n)"),
        2,
        twin="bsearch",
    ),
    Q(
        "Literature",
        "Authors",
        "Who wrote 'Pride and Prejudice'?",
        ("Charlotte Brontë", "Jane Austen", "George Eliot", "Mary Shelley"),
        2,
    ),
    Q(
        "Literature",
        "Authors",
        "Who wrote 'Nineteen Eighty-Four'?",
        ("Aldous Huxley", "George Orwell", "Ray Bradbury", "H. G. Wells"),
        2,
    ),
    Q(
        "Literature",
        "Authors",
        "Who wrote 'One Hundred Years of Solitude'?",
        ("Gabriel García Márquez", "Mario Vargas Llosa", "Jorge Luis Borges", "Isabel Allende"),
        1,
    ),
    Q(
        "Literature",
        "Authors",
        "Who wrote 'The Old Man and the Sea'?",
        ("John Steinbeck", "F. Scott Fitzgerald", "Ernest Hemingway", "William Faulkner"),
        3,
    ),
    Q(
        "Literature",
        "Authors",
        "Who is the author of 'Frankenstein'?",
        ("Mary Shelley", "Bram Stoker", "Emily Brontë", "Jane Austen"),
        1,
    ),
    Q(
        "Literature",
        "Authors",
        "'Crime and Punishment' was written by whom?",
        ("Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"),
        2,
        twin="dostoevsky",
    ),
    Q(
        "Literature",
        "Authors",
        "Who wrote the novel 'Crime and Punishment'?",
        ("Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov", "Ivan Turgenev"),
        2,
        twin="dostoevsky",
    ),
    Q(
        "Computer science",
        "Algorithms",
        "Which sorting algorithm has the best worst-case time?",
        ("Quicksort", "Bubble sort", "Merge sort", "Insertion sort"),
        3,
        weak=True,
    ),
    Q(
        "Computer science",
        "Data structures",
        "Which data structure works last in, first out?",
        ("Queue", "Stack", "Heap", "Linked list"),
        2,
    ),
    Q(
        "Computer science",
        "Data structures",
        "Which data structure works first in, first out?",
        ("Queue", "Stack", "Tree", "Graph"),
        1,
    ),
    Q(
        "Computer science",
        "Networks",
        "Which protocol resolves domain names to IP addresses?",
        ("HTTP", "DNS", "DHCP", "SMTP"),
        2,
    ),
    Q(
        "Computer science",
        "Networks",
        "What port does HTTPS use by default?",
        ("21", "80", "443", "8080"),
        3,
    ),
    Q(
        "Computer science",
        "Databases",
        "Which SQL clause filters groups after aggregation?",
        ("WHERE", "HAVING", "ORDER BY", "LIMIT"),
        2,
        weak=True,
        twin="having",
    ),
    Q(
        "Computer science",
        "Databases",
        "In SQL, which clause keeps only the groups that match a condition after GROUP BY?",
        ("WHERE", "HAVING", "ORDER BY", "LIMIT"),
        2,
        weak=True,
        twin="having",
    ),
]

# --------------------------------------------------------------------------------------------
# jiwoo: 영어 어휘 and 정보처리기사 (an IT certification), in Korean
# --------------------------------------------------------------------------------------------

VOCAB = {
    "abandon": "버리다",
    "acquire": "얻다",
    "adapt": "적응하다",
    "allocate": "할당하다",
    "anticipate": "예상하다",
    "assess": "평가하다",
    "comply": "따르다",
    "conceal": "숨기다",
    "deteriorate": "악화되다",
    "diminish": "줄어들다",
    "elaborate": "자세히 설명하다",
    "emerge": "나타나다",
    "endure": "견디다",
    "enhance": "향상시키다",
    "exaggerate": "과장하다",
    "hinder": "방해하다",
    "imply": "암시하다",
    "inevitable": "피할 수 없는",
    "meticulous": "꼼꼼한",
    "obsolete": "더 이상 쓰이지 않는",
    "persuade": "설득하다",
    "reluctant": "꺼리는",
    "scarce": "부족한",
    "sustain": "유지하다",
    "vague": "모호한",
    "thrive": "번창하다",
    "yield": "산출하다",
    "wary": "경계하는",
}
WEAK_VOCAB = {
    "deteriorate",
    "diminish",
    "hinder",
    "imply",
    "meticulous",
    "wary",
    "yield",
    "reluctant",
    "elaborate",
}

JIWOO = [
    Q(
        "정보처리기사",
        "데이터베이스",
        "관계형 데이터베이스에서 기본키가 가져야 할 성질은?",
        ("유일성과 최소성", "중복성과 일관성", "원자성과 지속성", "독립성과 고립성"),
        1,
        weak=True,
        twin="pk",
    ),
    Q(
        "정보처리기사",
        "데이터베이스",
        "기본키(Primary Key)의 조건으로 옳은 것은?",
        ("유일성과 최소성", "중복성과 일관성", "원자성과 지속성", "독립성과 고립성"),
        1,
        weak=True,
        twin="pk",
    ),
    Q(
        "정보처리기사",
        "데이터베이스",
        "트랜잭션의 ACID 특성이 아닌 것은?",
        ("원자성", "일관성", "독립성", "확장성"),
        4,
        weak=True,
    ),
    Q(
        "정보처리기사",
        "데이터베이스",
        "제2정규형에서 제거하는 종속은?",
        ("부분 함수 종속", "이행 함수 종속", "다치 종속", "조인 종속"),
        1,
        weak=True,
    ),
    Q(
        "정보처리기사",
        "데이터베이스",
        "제3정규형에서 제거하는 종속은?",
        ("부분 함수 종속", "이행 함수 종속", "다치 종속", "조인 종속"),
        2,
        weak=True,
    ),
    Q(
        "정보처리기사",
        "네트워크",
        "OSI 7계층 중 경로 설정(라우팅)을 담당하는 계층은?",
        ("데이터 링크 계층", "네트워크 계층", "전송 계층", "세션 계층"),
        2,
    ),
    Q(
        "정보처리기사",
        "네트워크",
        "TCP와 UDP가 속한 OSI 계층은?",
        ("네트워크 계층", "전송 계층", "세션 계층", "표현 계층"),
        2,
    ),
    Q(
        "정보처리기사",
        "네트워크",
        "IPv4 주소의 길이는 몇 비트인가?",
        ("16비트", "32비트", "64비트", "128비트"),
        2,
    ),
    Q(
        "정보처리기사",
        "네트워크",
        "IPv6 주소의 길이는 몇 비트인가?",
        ("32비트", "64비트", "128비트", "256비트"),
        3,
    ),
    Q(
        "정보처리기사",
        "소프트웨어 공학",
        "폭포수 모델의 특징으로 옳은 것은?",
        (
            "단계를 순차적으로 진행한다",
            "반복적으로 프로토타입을 만든다",
            "위험 분석을 반복한다",
            "짧은 스프린트로 개발한다",
        ),
        1,
    ),
    Q(
        "정보처리기사",
        "소프트웨어 공학",
        "결합도(Coupling) 중 가장 바람직한 것은?",
        ("내용 결합도", "공통 결합도", "제어 결합도", "자료 결합도"),
        4,
        weak=True,
    ),
    Q(
        "정보처리기사",
        "소프트웨어 공학",
        "응집도(Cohesion) 중 가장 바람직한 것은?",
        ("우연적 응집도", "논리적 응집도", "기능적 응집도", "시간적 응집도"),
        3,
        weak=True,
    ),
    Q(
        "정보처리기사",
        "운영체제",
        "교착 상태의 필요 조건이 아닌 것은?",
        ("상호 배제", "점유와 대기", "비선점", "선점"),
        4,
    ),
    Q(
        "정보처리기사",
        "운영체제",
        "페이지 교체 알고리즘 중 가장 오랫동안 사용되지 않은 페이지를 교체하는 것은?",
        ("FIFO", "LRU", "LFU", "OPT"),
        2,
    ),
]

# --------------------------------------------------------------------------------------------
# sam: physics and mathematics in English
# --------------------------------------------------------------------------------------------

UNITS = {
    "force": "newton",
    "energy": "joule",
    "power": "watt",
    "pressure": "pascal",
    "electric charge": "coulomb",
    "electric current": "ampere",
    "voltage": "volt",
    "electrical resistance": "ohm",
    "frequency": "hertz",
    "magnetic flux density": "tesla",
    "capacitance": "farad",
    "inductance": "henry",
    "luminous intensity": "candela",
    "amount of substance": "mole",
    "thermodynamic temperature": "kelvin",
}
WEAK_UNITS = {
    "magnetic flux density",
    "capacitance",
    "inductance",
    "electric charge",
    "luminous intensity",
    "pressure",
}

SAM = [
    Q(
        "Physics",
        "Mechanics",
        "What is the SI unit of acceleration?",
        ("m/s", "m/s²", "N", "kg·m/s"),
        2,
    ),
    Q(
        "Physics",
        "Mechanics",
        "Newton's second law states that force equals what?",
        (
            "mass times velocity",
            "mass times acceleration",
            "mass divided by acceleration",
            "momentum times time",
        ),
        2,
        twin="newton",
    ),
    Q(
        "Physics",
        "Mechanics",
        "According to Newton's second law, force is equal to",
        (
            "mass times velocity",
            "mass times acceleration",
            "mass divided by acceleration",
            "momentum times time",
        ),
        2,
        twin="newton",
    ),
    Q(
        "Physics",
        "Mechanics",
        "What is the approximate acceleration due to gravity on Earth?",
        ("6.7 m/s²", "9.8 m/s²", "12.4 m/s²", "3.0 m/s²"),
        2,
    ),
    Q(
        "Physics",
        "Waves",
        "What is the speed of light in a vacuum, approximately?",
        ("3 × 10⁵ m/s", "3 × 10⁸ m/s", "3 × 10¹⁰ m/s", "340 m/s"),
        2,
    ),
    Q(
        "Physics",
        "Waves",
        "What is the approximate speed of sound in air at room temperature?",
        ("34 m/s", "343 m/s", "3,430 m/s", "3 × 10⁸ m/s"),
        2,
    ),
    Q(
        "Physics",
        "Electricity",
        "Ohm's law relates voltage, current and what?",
        ("power", "resistance", "charge", "capacitance"),
        2,
        weak=True,
    ),
    Q(
        "Physics",
        "Electricity",
        "If a 2 Ω resistor carries 3 A, what is the voltage across it?",
        ("1.5 V", "5 V", "6 V", "9 V"),
        3,
        weak=True,
    ),
    Q(
        "Physics",
        "Electricity",
        "What is the power used by a 12 V device drawing 2 A?",
        ("6 W", "10 W", "14 W", "24 W"),
        4,
        weak=True,
    ),
    Q(
        "Physics",
        "Thermodynamics",
        "At what temperature does water boil at sea level?",
        ("90 °C", "100 °C", "110 °C", "120 °C"),
        2,
    ),
    Q(
        "Physics",
        "Thermodynamics",
        "Absolute zero is about how many degrees Celsius?",
        ("-100 °C", "-173 °C", "-273 °C", "-373 °C"),
        3,
    ),
    Q(
        "Mathematics",
        "Geometry",
        "What is the sum of the interior angles of a triangle?",
        ("90°", "180°", "270°", "360°"),
        2,
        twin="triangle",
    ),
    Q(
        "Mathematics",
        "Geometry",
        "The interior angles of any triangle add up to how many degrees?",
        ("90°", "180°", "270°", "360°"),
        2,
        twin="triangle",
    ),
    Q(
        "Mathematics",
        "Geometry",
        "What is the area of a circle with radius r?",
        ("2πr", "πr²", "πd", "4πr²"),
        2,
    ),
    Q(
        "Mathematics",
        "Geometry",
        "What is the circumference of a circle with radius r?",
        ("2πr", "πr²", "πr", "4πr²"),
        1,
    ),
    Q(
        "Mathematics",
        "Algebra",
        "What are the roots of x² - 5x + 6 = 0?",
        ("1 and 6", "2 and 3", "-2 and -3", "-1 and 6"),
        2,
        weak=True,
    ),
    Q(
        "Mathematics",
        "Algebra",
        "Solve x² - 7x + 12 = 0.",
        ("3 and 4", "2 and 6", "-3 and -4", "1 and 12"),
        1,
        weak=True,
    ),
    Q(
        "Mathematics",
        "Algebra",
        "What is the slope of the line y = 3x + 2?",
        ("2", "3", "5", "1/3"),
        2,
    ),
    Q("Mathematics", "Calculus", "What is the derivative of x²?", ("x", "2x", "x²/2", "2"), 2),
    Q(
        "Mathematics",
        "Calculus",
        "What is the derivative of sin x?",
        ("cos x", "-cos x", "-sin x", "tan x"),
        1,
        weak=True,
    ),
    Q(
        "Mathematics",
        "Calculus",
        "What is the integral of 1/x dx?",
        ("x", "ln|x| + C", "1/x² + C", "e^x + C"),
        2,
        weak=True,
    ),
    Q(
        "History",
        "Modern",
        "In which year did World War II end?",
        ("1939", "1944", "1945", "1950"),
        3,
    ),
    Q(
        "History",
        "Modern",
        "In which year did World War I begin?",
        ("1905", "1914", "1918", "1939"),
        2,
    ),
    Q(
        "History",
        "Modern",
        "In which year did the Berlin Wall fall?",
        ("1985", "1989", "1991", "1993"),
        2,
        twin="berlin",
    ),
    Q(
        "History",
        "Modern",
        "When did the Berlin Wall come down?",
        ("1985", "1989", "1991", "1993"),
        2,
        twin="berlin",
    ),
    Q(
        "History",
        "Modern",
        "Who was the first person to walk on the Moon?",
        ("Yuri Gagarin", "Buzz Aldrin", "Neil Armstrong", "John Glenn"),
        3,
    ),
    Q(
        "History",
        "Ancient",
        "Which civilisation built Machu Picchu?",
        ("Aztec", "Maya", "Inca", "Olmec"),
        3,
    ),
    Q(
        "History",
        "Ancient",
        "Who was the first emperor of Rome?",
        ("Julius Caesar", "Augustus", "Nero", "Trajan"),
        2,
        weak=True,
        twin="augustus",
    ),
    Q(
        "History",
        "Ancient",
        "Who became Rome's first emperor in 27 BC?",
        ("Julius Caesar", "Augustus", "Nero", "Trajan"),
        2,
        weak=True,
        twin="augustus",
    ),
    Q("Chemistry", "Reactions", "What is the pH of pure water at 25 °C?", ("5", "7", "9", "14"), 2),
    Q(
        "Chemistry",
        "Reactions",
        "What gas is released when zinc reacts with hydrochloric acid?",
        ("Oxygen", "Hydrogen", "Chlorine", "Carbon dioxide"),
        2,
    ),
    Q(
        "Chemistry",
        "Gases",
        "Which gas do plants absorb for photosynthesis?",
        ("Oxygen", "Nitrogen", "Carbon dioxide", "Hydrogen"),
        3,
    ),
    Q(
        "Chemistry",
        "Gases",
        "What is Avogadro's number, approximately?",
        ("6.02 × 10²³", "3.00 × 10⁸", "1.60 × 10⁻¹⁹", "9.81"),
        1,
    ),
]


def users() -> list[User]:
    rng = random.Random(20261124)
    minji = User("minji@demo.study-embed", "한국 고등학생: 한국사, 생명과학, 수학", list(MINJI))
    alex = User("alex@demo.study-embed", "general knowledge in English", list(ALEX))
    jiwoo = User("jiwoo@demo.study-embed", "영어 어휘와 정보처리기사", list(JIWOO))
    sam = User("sam@demo.study-embed", "physics and mathematics in English", list(SAM))

    cities = list(CAPITALS.values())
    for country, city in CAPITALS.items():
        choices, correct = _mc(rng, city, cities)
        alex.questions.append(
            Q(
                "Geography",
                "Capitals",
                f"What is the capital of {country}?",
                choices,
                correct,
                weak=country in WEAK_CAPITALS,
                twin="canberra" if country == "Australia" else None,
            )
        )
    symbols = list(ELEMENTS.values())
    for element, symbol in ELEMENTS.items():
        choices, correct = _mc(rng, symbol, symbols)
        alex.questions.append(
            Q(
                "Chemistry",
                "Elements",
                f"What is the chemical symbol for {element}?",
                choices,
                correct,
                weak=element in WEAK_ELEMENTS,
            )
        )
    meanings = list(VOCAB.values())
    for word, meaning in VOCAB.items():
        choices, correct = _mc(rng, meaning, meanings)
        jiwoo.questions.append(
            Q(
                "영어",
                "수능 어휘",
                f"다음 영어 단어의 뜻으로 알맞은 것은? {word}",
                choices,
                correct,
                weak=word in WEAK_VOCAB,
            )
        )
    words = list(VOCAB)
    for word, meaning in list(VOCAB.items())[:12]:
        choices, correct = _mc(rng, word, words)
        jiwoo.questions.append(
            Q(
                "영어",
                "수능 어휘",
                f"'{meaning}'에 해당하는 영어 단어는?",
                choices,
                correct,
                weak=word in WEAK_VOCAB,
            )
        )
    units = list(UNITS.values())
    for quantity, unit in UNITS.items():
        choices, correct = _mc(rng, unit, units)
        sam.questions.append(
            Q(
                "Physics",
                "SI units",
                f"What is the SI unit of {quantity}?",
                choices,
                correct,
                weak=quantity in WEAK_UNITS,
            )
        )
    for a, b in [(12, 13), (14, 15), (17, 19), (23, 24), (18, 21), (25, 27), (16, 32), (19, 21)]:
        answer = a * b
        choices, correct = _mc(
            rng, str(answer), [str(answer + d) for d in (-20, -12, -10, -2, 0, 2, 10, 12, 20)]
        )
        sam.questions.append(
            Q(
                "Mathematics",
                "Mental arithmetic",
                f"What is {a} × {b}?",
                choices,
                correct,
                weak=True,
            )
        )
    for n in (144, 169, 196, 225, 256, 289, 324, 361):
        answer = round(n**0.5)
        choices, correct = _mc(
            rng, str(answer), [str(answer + d) for d in (-3, -2, -1, 0, 1, 2, 3)]
        )
        sam.questions.append(
            Q(
                "Mathematics",
                "Mental arithmetic",
                f"What is the square root of {n}?",
                choices,
                correct,
            )
        )
    return [minji, alex, jiwoo, sam]


def attempts(user: User, rng: random.Random) -> list[tuple[int, int, int]]:
    """(question index, selected choice, days ago): most questions answered once or twice; the
    user's weak questions answered wrongly more often than not, and wrongly last."""
    out = []
    for i, q in enumerate(user.questions):
        tries = rng.randint(1, 3)
        gaps = [rng.randint(1, 9) for _ in range(tries)]
        for t in range(tries):
            days_ago = sum(gaps[t:])  # strictly fewer days ago for each new try
            last = t == tries - 1
            if q.weak:
                wrong = last or rng.random() < 0.6
            else:
                wrong = not last and rng.random() < 0.08
            if wrong:
                selected = rng.choice([c for c in range(1, 5) if c != q.correct])
            else:
                selected = q.correct
            out.append((i, selected, days_ago))
    return out
