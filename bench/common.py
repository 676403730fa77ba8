"""Shared by the benchmark scripts: a throwaway cluster and realistic question rows."""

from __future__ import annotations

from pathlib import Path

from study_embed_dev.localdb import free_port, scratch_database

__all__ = ["LOAD", "LOAD_MANY", "add_users", "free_port", "scratch_database"]

ROOT = Path(__file__).resolve().parents[1]

# Korean and English text of realistic length; %(...)s are psycopg parameters.
LOAD = """
INSERT INTO study_questions (user_id, study_topic_id, question_text, choice_1, choice_2,
                             choice_3, choice_4, correct_choice)
SELECT %(uid)s, %(tid)s,
       '다음 중 ' || g || '번째 문제의 설명으로 옳은 것은? Which statement about item ' || g
           || ' is correct according to the lecture notes?',
       '보기 하나 ' || g, 'option two ' || g, '세 번째 보기 ' || g, 'the fourth option ' || g,
       1 + g %% 4
FROM generate_series(1, %(n)s) g
"""


# The same text shapes spread over 1,000 users with 5 topics each (see add_users()).
LOAD_MANY = LOAD.replace(
    "SELECT %(uid)s, %(tid)s,", "SELECT 1 + g %% 1000, (1 + g %% 1000) * 5 - g %% 5,"
)


def add_users(conn, users: int = 1000, topics_per_user: int = 5) -> None:
    conn.execute(
        "INSERT INTO users (id, email) SELECT g, 'user' || g || '@example.com'"
        " FROM generate_series(1, %s) g ON CONFLICT DO NOTHING",
        (users,),
    )
    conn.execute(
        "INSERT INTO study_topics (id, user_id, name)"
        " SELECT t, (t + %s - 1) / %s, '주제 ' || t FROM generate_series(1, %s) t"
        " ON CONFLICT DO NOTHING",
        (topics_per_user, topics_per_user, users * topics_per_user),
    )
