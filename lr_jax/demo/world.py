"""The arithmetic world: seeded multi-step word problems with step-by-step solutions.

A tiny, fully procedural stand-in for GSM8K so the demo runs a whole LightReasoner loop on a laptop
CPU with nothing to download. Each problem comes from one of a few dozen templates (shopping, travel,
sharing, ages, recipes, savings, ...), takes 2-4 arithmetic steps on small integers, and is solved
one step per line, each line holding exactly one equation `a op b = c` (op in + - * /, exact integer
division), ending in `The answer is \\boxed{N}.`:

  question: "Ana buys 3 notebooks at 4 dollars each and a pen for 2 dollars. She pays with 20
             dollars. How much change does she get?"
  solution: "The notebooks cost 3 * 4 = 12 dollars.\\nWith the pen she spends 12 + 2 = 14 dollars.\\n
             Her change is 20 - 14 = 6 dollars.\\nThe answer is \\boxed{6}."

Every operand of a solution equation is either a number written in the question or the result of an
earlier line, and the last equation's result is the answer.

Determinism: all randomness flows through `random.Random.random()`, whose output sequence Python
guarantees across versions and platforms (unlike `randint`/`choice`, which it does not), and no code
depends on set/dict iteration order or `hash()`. The same seed gives the same problems everywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from typing import Callable, Iterable, Sequence

SPLITS = ("pretrain", "sample", "test")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One word problem.

  Attributes:
    question: the problem text.
    solution: one line per step, each with one equation, then `The answer is \\boxed{N}.`.
    answer: the integer answer as a decimal string (no sign, no separators).
    template: name of the template that made it.
  """
  question: str
  solution: str
  answer: str
  template: str


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Knobs that size the problems.

  Attributes:
    min_steps, max_steps: only templates whose solution has this many equations (2..4) are drawn.
    max_number: upper bound of the additive quantities drawn for a question (counts, prices, ages).
    max_factor: upper bound of multipliers and divisors (items per pack, weeks, friends sharing).
  Derived quantities (products, totals, a price that makes the change exact) may exceed both bounds.
  """
  min_steps: int = 2
  max_steps: int = 4
  max_number: int = 20
  max_factor: int = 9

  def __post_init__(self):
    if not 2 <= self.min_steps <= self.max_steps <= 4:
      raise ValueError(f"Difficulty: need 2 <= min_steps <= max_steps <= 4, got "
                       f"min_steps={self.min_steps} max_steps={self.max_steps}")
    if not 6 <= self.max_number <= 999:
      raise ValueError(f"Difficulty.max_number: expected 6..999, got {self.max_number}")
    if not 3 <= self.max_factor <= 99:
      raise ValueError(f"Difficulty.max_factor: expected 3..99, got {self.max_factor}")


class _Reject(Exception):
  """A draw broke a template's constraint (negative count, inexact division); draw again."""


class _Draw:
  """Random draws for one problem, built only on `rng.random()` (see module docstring)."""

  def __init__(self, rng: random.Random, difficulty: Difficulty):
    self._rng = rng
    self._difficulty = difficulty

  def int(self, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    if hi < lo:
      raise _Reject
    return lo + int(self._rng.random() * (hi - lo + 1))

  def num(self, lo: int = 2) -> int:
    """An additive quantity in [lo, max_number]."""
    return self.int(lo, self._difficulty.max_number)

  def factor(self, lo: int = 2) -> int:
    """A multiplier or divisor in [lo, max_factor]."""
    return self.int(lo, self._difficulty.max_factor)

  def pick(self, options: Sequence):
    return options[self.int(0, len(options) - 1)]

  def people(self, k: int) -> list[tuple[str, str, str]]:
    """k distinct (name, subject pronoun, possessive pronoun) triples."""
    pool = list(_PEOPLE)
    return [pool.pop(self.int(0, len(pool) - 1)) for _ in range(k)]


class _Steps:
  """Collects solution lines; `eq` computes one exact step and returns (result, 'a op b = c')."""

  def __init__(self):
    self.lines: list[str] = []
    self.result: int | None = None

  def eq(self, a: int, op: str, b: int) -> tuple[int, str]:
    if op == "+":
      c = a + b
    elif op == "-":
      c = a - b
    elif op == "*":
      c = a * b
    elif op == "/":
      if b == 0 or a % b:
        raise _Reject
      c = a // b
    else:
      raise ValueError(f"_Steps.eq: unknown operator {op!r}")
    if c <= 0:
      raise _Reject
    self.result = c
    return c, f"{a} {op} {b} = {c}"

  def line(self, text: str):
    self.lines.append(text)


@dataclasses.dataclass(frozen=True)
class Template:
  """A family of problems: `build(draw, steps)` returns the question and fills `steps`."""
  name: str
  num_steps: int
  build: Callable[[_Draw, _Steps], str]


_PEOPLE = (
    ("Ana", "she", "her"), ("Ben", "he", "his"), ("Mia", "she", "her"), ("Tom", "he", "his"),
    ("Lily", "she", "her"), ("Sam", "he", "his"), ("Zoe", "she", "her"), ("Max", "he", "his"),
    ("Ella", "she", "her"), ("Leo", "he", "his"), ("Nina", "she", "her"), ("Jack", "he", "his"),
    ("Ava", "she", "her"), ("Omar", "he", "his"), ("Kim", "she", "her"), ("Raj", "he", "his"),
)
_SHOP_ITEMS = ("notebooks", "pens", "apples", "cups", "books", "shirts", "toys", "plates", "hats",
               "socks", "candles", "balls")
_SNACKS = ("candies", "cookies", "grapes", "nuts", "stickers", "marbles")
_COLLECTIONS = ("stamps", "cards", "shells", "coins", "stickers", "rocks")


def _shop_change(d: _Draw, s: _Steps) -> str:
  (who, she, her), = d.people(1)
  item = d.pick(_SHOP_ITEMS)
  n, price, extra = d.factor(), d.factor(), d.num(1)
  cost, e1 = s.eq(n, "*", price)
  s.line(f"The {item} cost {e1} dollars.")
  total, e2 = s.eq(cost, "+", extra)
  s.line(f"With the bag {she} spends {e2} dollars.")
  paid = total + d.num(1)
  _, e3 = s.eq(paid, "-", total)
  s.line(f"{her.capitalize()} change is {e3} dollars.")
  return (f"{who} buys {n} {item} at {price} dollars each and a bag for {extra} dollars. "
          f"{she.capitalize()} pays with {paid} dollars. How much change does {she} get?")


def _shop_two_items(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  a_item, b_item = d.pick((("shirts", "hats"), ("pens", "books"), ("cups", "plates"),
                           ("apples", "pears")))
  a, pa, b, pb = d.factor(), d.factor(), d.factor(), d.factor()
  ca, e1 = s.eq(a, "*", pa)
  s.line(f"The {a_item} cost {e1} dollars.")
  cb, e2 = s.eq(b, "*", pb)
  s.line(f"The {b_item} cost {e2} dollars.")
  _, e3 = s.eq(ca, "+", cb)
  s.line(f"In total {she} spends {e3} dollars.")
  return (f"{who} buys {a} {a_item} for {pa} dollars each and {b} {b_item} for {pb} dollars each. "
          f"How many dollars does {she} spend?")


def _shop_sale(d: _Draw, s: _Steps) -> str:
  (who, _, _), = d.people(1)
  item = d.pick(_SHOP_ITEMS)
  price, off, n = d.num(3), d.num(1), d.factor()
  sale, e1 = s.eq(price, "-", off)
  s.line(f"On sale one costs {e1} dollars.")
  _, e2 = s.eq(sale, "*", n)
  s.line(f"For {n} of them {who} pays {e2} dollars.")
  return (f"A pack of {item} costs {price} dollars, but today it is {off} dollars off. "
          f"{who} buys {n} packs. How much does {who} pay?")


def _shop_budget(d: _Draw, s: _Steps) -> str:
  (who, she, her), = d.people(1)
  item = d.pick(_SHOP_ITEMS)
  spent, price = d.num(1), d.factor()
  count = d.factor(1)
  budget = spent + price * count
  left, e1 = s.eq(budget, "-", spent)
  s.line(f"After lunch {she} has {e1} dollars.")
  _, e2 = s.eq(left, "/", price)
  s.line(f"{she.capitalize()} can buy {e2} {item}.")
  return (f"{who} has {budget} dollars. {she.capitalize()} spends {spent} dollars on lunch and uses "
          f"the rest of {her} money on {item} that cost {price} dollars each. "
          f"How many {item} can {she} buy?")


def _travel_two_legs(d: _Draw, s: _Steps) -> str:
  vehicle = d.pick(("bus", "train", "car", "truck"))
  v1, t1, v2, t2 = d.num(), d.factor(1), d.num(), d.factor(1)
  d1, e1 = s.eq(v1, "*", t1)
  s.line(f"First the {vehicle} goes {e1} km.")
  d2, e2 = s.eq(v2, "*", t2)
  s.line(f"Then it goes {e2} km.")
  _, e3 = s.eq(d1, "+", d2)
  s.line(f"In all it travels {e3} km.")
  return (f"A {vehicle} drives at {v1} km per hour for {t1} hours, then at {v2} km per hour for "
          f"{t2} hours. How many km does it travel?")


def _travel_remaining(d: _Draw, s: _Steps) -> str:
  people = d.pick(("The Lees", "The Khans", "Two friends", "A family"))
  morning, afternoon = d.num(), d.num()
  trip = morning + afternoon + d.num(1)
  done, e1 = s.eq(morning, "+", afternoon)
  s.line(f"They drive {e1} km so far.")
  _, e2 = s.eq(trip, "-", done)
  s.line(f"They still have {e2} km to go.")
  return (f"{people} go on a {trip} km trip. They drive {morning} km in the morning and "
          f"{afternoon} km in the afternoon. How many km are left?")


def _travel_legs_left(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  v1, t1, v2, t2 = d.num(), d.factor(1), d.num(), d.factor(1)
  trip = v1 * t1 + v2 * t2 + d.num(1)
  d1, e1 = s.eq(v1, "*", t1)
  s.line(f"First {she} rides {e1} km.")
  d2, e2 = s.eq(v2, "*", t2)
  s.line(f"Then {she} rides {e2} km.")
  done, e3 = s.eq(d1, "+", d2)
  s.line(f"So far {she} rides {e3} km.")
  _, e4 = s.eq(trip, "-", done)
  s.line(f"{she.capitalize()} has {e4} km left.")
  return (f"{who} cycles a {trip} km route. {she.capitalize()} rides {v1} km per hour for {t1} "
          f"hours, then {v2} km per hour for {t2} hours. How many km of the route are left?")


def _travel_fuel(d: _Draw, s: _Steps) -> str:
  per_day, days, price = d.factor(), d.factor(), d.factor()
  fuel, e1 = s.eq(per_day, "*", days)
  s.line(f"The van uses {e1} liters.")
  _, e2 = s.eq(fuel, "*", price)
  s.line(f"The fuel costs {e2} dollars.")
  return (f"A van uses {per_day} liters of fuel each day. Fuel costs {price} dollars per liter. "
          f"How much does the fuel cost for {days} days?")


def _share_equally(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  snack = d.pick(_SNACKS)
  friends, each = d.factor(), d.factor(1)
  total = friends * each
  bought = d.int(1, total - 1)
  had = total - bought
  t, e1 = s.eq(had, "+", bought)
  s.line(f"{who} has {e1} {snack}.")
  _, e2 = s.eq(t, "/", friends)
  s.line(f"Each friend gets {e2} {snack}.")
  return (f"{who} has {had} {snack} and buys {bought} more. {she.capitalize()} shares them "
          f"equally among {friends} friends. How many {snack} does each friend get?")


def _share_leftover(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  boxes, per_box, students, each = d.factor(), d.factor(), d.factor(), d.factor(1)
  total, e1 = s.eq(boxes, "*", per_box)
  s.line(f"There are {e1} crayons.")
  given, e2 = s.eq(students, "*", each)
  s.line(f"{she.capitalize()} gives away {e2} crayons.")
  _, e3 = s.eq(total, "-", given)
  s.line(f"{e3} crayons are left.")
  return (f"{who} has {boxes} boxes of {per_box} crayons. {she.capitalize()} gives {each} crayons "
          f"to each of {students} students. How many crayons are left?")


def _share_pizza(d: _Draw, s: _Steps) -> str:
  pizzas, slices, people = d.factor(1), d.factor(4), d.factor()
  total, e1 = s.eq(pizzas, "*", slices)
  s.line(f"There are {e1} slices.")
  _, e2 = s.eq(total, "/", people)
  s.line(f"Each person gets {e2} slices.")
  return (f"There are {pizzas} pizzas cut into {slices} slices each. {people} people share the "
          f"slices equally. How many slices does each person get?")


def _share_earnings(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _) = d.people(2)
  ha, ra, hb, rb = d.factor(1), d.factor(), d.factor(1), d.factor()
  ea, e1 = s.eq(ha, "*", ra)
  s.line(f"{a} earns {e1} dollars.")
  eb, e2 = s.eq(hb, "*", rb)
  s.line(f"{b} earns {e2} dollars.")
  total, e3 = s.eq(ea, "+", eb)
  s.line(f"Together they earn {e3} dollars.")
  _, e4 = s.eq(total, "/", 2)
  s.line(f"Each gets {e4} dollars.")
  return (f"{a} works {ha} hours at {ra} dollars per hour and {b} works {hb} hours at {rb} dollars "
          f"per hour. They split the money equally between the 2 of them. How much does each get?")


def _ages_sum(d: _Draw, s: _Steps) -> str:
  (who, _, her), = d.people(1)
  sibling = d.pick(("brother", "sister", "cousin"))
  age, older = d.num(1), d.num(1)
  other, e1 = s.eq(age, "+", older)
  s.line(f"The {sibling} is {e1} years old.")
  _, e2 = s.eq(age, "+", other)
  s.line(f"Together they are {e2} years old.")
  return (f"{who} is {age} years old. {her.capitalize()} {sibling} is {older} years older. "
          f"What is the sum of their ages?")


def _ages_future(d: _Draw, s: _Steps) -> str:
  (who, _, her), = d.people(1)
  parent = d.pick(("father", "mother", "aunt", "uncle"))
  age, times, years = d.factor(), d.int(2, 5), d.num(1)
  now, e1 = s.eq(age, "*", times)
  s.line(f"The {parent} is {e1} years old now.")
  _, e2 = s.eq(now, "+", years)
  s.line(f"In {years} years the {parent} will be {e2}.")
  return (f"{who} is {age} years old. {her.capitalize()} {parent} is {times} times as old. "
          f"How old will {her} {parent} be in {years} years?")


def _ages_past(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _) = d.people(2)
  years, future, younger = d.num(1), d.num(3), d.num(1)
  now, e1 = s.eq(future, "-", years)
  s.line(f"{a} is {e1} years old now.")
  _, e2 = s.eq(now, "-", younger)
  s.line(f"{b} is {e2} years old.")
  return (f"In {years} years {a} will be {future} years old. {b} is {younger} years younger than "
          f"{a} is now. How old is {b}?")


def _ages_three(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _), (c, _, _) = d.people(3)
  age, more, fewer = d.num(1), d.num(1), d.num(1)
  age_b, e1 = s.eq(age, "+", more)
  s.line(f"{b} is {e1} years old.")
  age_c, e2 = s.eq(age_b, "-", fewer)
  s.line(f"{c} is {e2} years old.")
  ab, e3 = s.eq(age, "+", age_b)
  s.line(f"{a} and {b} are {e3} years old together.")
  _, e4 = s.eq(ab, "+", age_c)
  s.line(f"All three are {e4} years old together.")
  return (f"{a} is {age} years old. {b} is {more} years older than {a}, and {c} is {fewer} years "
          f"younger than {b}. What is the sum of their three ages?")


def _recipe_flour(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  cups, cakes, spare = d.factor(1), d.factor(), d.num(1)
  used, e1 = s.eq(cups, "*", cakes)
  s.line(f"The cakes use {e1} cups.")
  _, e2 = s.eq(used, "+", spare)
  s.line(f"{she.capitalize()} started with {e2} cups.")
  return (f"A cake needs {cups} cups of flour. {who} bakes {cakes} cakes and has {spare} cups of "
          f"flour left. How many cups of flour did {she} start with?")


def _recipe_eggs(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  per_batch, mon, tue = d.factor(1), d.factor(1), d.factor(1)
  eggs = per_batch * (mon + tue) + d.num(1)
  batches, e1 = s.eq(mon, "+", tue)
  s.line(f"{she.capitalize()} bakes {e1} batches.")
  used, e2 = s.eq(batches, "*", per_batch)
  s.line(f"They use {e2} eggs.")
  _, e3 = s.eq(eggs, "-", used)
  s.line(f"{e3} eggs are left.")
  return (f"{who} has {eggs} eggs. A batch of cookies needs {per_batch} eggs. {she.capitalize()} "
          f"bakes {mon} batches on Monday and {tue} batches on Tuesday. How many eggs are left?")


def _recipe_scale(d: _Draw, s: _Steps) -> str:
  serves, guests, spoons = d.factor(), d.factor(), d.factor(1)
  batches = guests
  people = serves * batches
  n, e1 = s.eq(people, "/", serves)
  s.line(f"The cook makes {e1} batches.")
  _, e2 = s.eq(n, "*", spoons)
  s.line(f"That takes {e2} spoons of sugar.")
  return (f"One batch of soup serves {serves} people and needs {spoons} spoons of sugar. A cook "
          f"makes soup for {people} people. How many spoons of sugar are needed?")


def _savings_weeks(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  weekly, weeks, spend = d.factor(), d.factor(), d.num(1)
  saved, e1 = s.eq(weekly, "*", weeks)
  s.line(f"{who} saves {e1} dollars.")
  _, e2 = s.eq(saved, "-", spend)
  s.line(f"{she.capitalize()} has {e2} dollars left.")
  return (f"{who} saves {weekly} dollars each week for {weeks} weeks. Then {she} spends {spend} "
          f"dollars on a game. How many dollars does {she} have left?")


def _savings_goal(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  item = d.pick(("bike", "tent", "guitar", "watch"))
  has, weekly, weeks = d.num(1), d.factor(), d.factor(1)
  price = has + weekly * weeks
  need, e1 = s.eq(price, "-", has)
  s.line(f"{who} still needs {e1} dollars.")
  _, e2 = s.eq(need, "/", weekly)
  s.line(f"That takes {e2} weeks.")
  return (f"A {item} costs {price} dollars. {who} has {has} dollars and saves {weekly} dollars "
          f"each week. How many weeks until {she} can buy the {item}?")


def _savings_allowance(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  earn, spend, weeks = d.num(2), d.num(1), d.factor()
  kept, e1 = s.eq(earn, "-", spend)
  s.line(f"Each week {she} keeps {e1} dollars.")
  _, e2 = s.eq(kept, "*", weeks)
  s.line(f"After {weeks} weeks {she} has {e2} dollars.")
  return (f"{who} gets {earn} dollars each week and spends {spend} dollars of it. "
          f"How many dollars does {she} have after {weeks} weeks?")


def _savings_compare(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _) = d.people(2)
  ra, rb, weeks = d.factor(), d.factor(), d.factor()
  sa, e1 = s.eq(ra, "*", weeks)
  s.line(f"{a} saves {e1} dollars.")
  sb, e2 = s.eq(rb, "*", weeks)
  s.line(f"{b} saves {e2} dollars.")
  _, e3 = s.eq(sa, "-", sb)
  s.line(f"{a} saves {e3} dollars more.")
  return (f"{a} saves {ra} dollars a week and {b} saves {rb} dollars a week. After {weeks} weeks, "
          f"how many more dollars has {a} saved than {b}?")


def _garden_rows(d: _Draw, s: _Steps) -> str:
  (who, _, her), = d.people(1)
  plant = d.pick(("tulips", "beans", "roses", "carrots"))
  rows, per_row, died, added = d.factor(), d.factor(), d.num(1), d.num(1)
  total, e1 = s.eq(rows, "*", per_row)
  s.line(f"At first there are {e1} {plant}.")
  alive, e2 = s.eq(total, "-", died)
  s.line(f"After some die there are {e2}.")
  _, e3 = s.eq(alive, "+", added)
  s.line(f"Now there are {e3} {plant}.")
  return (f"{who} plants {rows} rows of {plant} with {per_row} in each row. {died} of them die and "
          f"{who} plants {added} more. How many {plant} are in {her} garden now?")


def _library_books(d: _Draw, s: _Steps) -> str:
  start, mon, tue, back = d.num(), d.num(1), d.num(1), d.num(1)
  left1, e1 = s.eq(start, "-", mon)
  s.line(f"After Monday there are {e1} books.")
  left2, e2 = s.eq(left1, "-", tue)
  s.line(f"After Tuesday there are {e2} books.")
  _, e3 = s.eq(left2, "+", back)
  s.line(f"With the returns there are {e3} books.")
  return (f"A library shelf has {start} books. {mon} books are borrowed on Monday and {tue} on "
          f"Tuesday. Then {back} books are returned. How many books are on the shelf?")


def _class_groups(d: _Draw, s: _Steps) -> str:
  classes, per_class, size = d.factor(), d.factor(4), d.factor()
  total = classes * per_class
  absent = total % size or size
  students, e1 = s.eq(classes, "*", per_class)
  s.line(f"There are {e1} students.")
  here, e2 = s.eq(students, "-", absent)
  s.line(f"{e2} students are present.")
  _, e3 = s.eq(here, "/", size)
  s.line(f"They make {e3} groups.")
  return (f"A school has {classes} classes with {per_class} students each. {absent} students are "
          f"absent and the rest work in groups of {size}. How many groups are there?")


