"""The arithmetic world: seeded multi-step word problems with step-by-step solutions.

A tiny, fully procedural stand-in for GSM8K so the demo runs a whole LightReasoner loop on a
laptop CPU with nothing to download. Each problem comes from one of a few dozen templates
(shopping, travel, sharing, ages, recipes, savings, ...), takes 2-4 arithmetic steps on small
integers, and is solved one step per line, each line holding exactly one equation `a op b = c`
(op in + - * /, exact integer division), ending in `The answer is \\boxed{N}.`:

  question: "Omar buys 5 socks at 4 dollars each and a bag for 11 dollars. He pays with 40
             dollars. How much change does he get?"
  solution: "The socks cost 5 * 4 = 20 dollars.\\nWith the bag he spends 20 + 11 = 31 dollars.\\n
             His change is 40 - 31 = 9 dollars.\\nThe answer is \\boxed{9}."

Every operand of a solution equation is either a number written in the question or the result of an
earlier line, and the last equation's result is the answer.

Determinism: all randomness flows through `random.Random.random()`, whose output sequence Python
guarantees across versions and platforms (its docs promise nothing for `randint`/`choice`), and
no code depends on set/dict iteration order or `hash()`. The same seed gives the same problems
everywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Callable, Iterable, Sequence

from lr_jax.files import write_text_atomic

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
    if not 4 <= self.max_factor <= 99:
      raise ValueError(f"Difficulty.max_factor: expected 4..99, got {self.max_factor}")


class _Reject(Exception):
  """A draw broke a template's constraint (negative count, inexact division); draw again."""


class _Draw:
  """Random draws for one problem, built only on `rng.random()` (see module docstring)."""

  def __init__(self, rng: random.Random, difficulty: Difficulty):
    self._rng = rng
    self._difficulty = difficulty

  def between(self, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    if hi < lo:
      raise _Reject
    return lo + int(self._rng.random() * (hi - lo + 1))

  def num(self, lo: int = 2) -> int:
    """An additive quantity in [lo, max_number]."""
    return self.between(lo, self._difficulty.max_number)

  def factor(self, lo: int = 2) -> int:
    """A multiplier or divisor in [lo, max_factor]."""
    return self.between(lo, self._difficulty.max_factor)

  def pick(self, options: Sequence):
    return options[self.between(0, len(options) - 1)]

  def people(self, k: int) -> list[tuple[str, str, str]]:
    """k distinct (name, subject pronoun, possessive pronoun) triples."""
    pool = list(_PEOPLE)
    return [pool.pop(self.between(0, len(pool) - 1)) for _ in range(k)]


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
  n, price, extra = d.factor(), d.factor(), d.num()
  cost, e1 = s.eq(n, "*", price)
  s.line(f"The {item} cost {e1} dollars.")
  total, e2 = s.eq(cost, "+", extra)
  s.line(f"With the bag {she} spends {e2} dollars.")
  paid = total + d.num()
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
  price, off, n = d.num(3), d.num(), d.factor()
  sale, e1 = s.eq(price, "-", off)
  s.line(f"On sale one costs {e1} dollars.")
  _, e2 = s.eq(sale, "*", n)
  s.line(f"For {n} of them {who} pays {e2} dollars.")
  return (f"A pack of {item} costs {price} dollars, but today it is {off} dollars off. "
          f"{who} buys {n} packs. How much does {who} pay?")


def _shop_budget(d: _Draw, s: _Steps) -> str:
  (who, she, her), = d.people(1)
  item = d.pick(_SHOP_ITEMS)
  spent, price = d.num(), d.factor()
  count = d.factor()
  budget = spent + price * count
  left, e1 = s.eq(budget, "-", spent)
  s.line(f"After lunch {she} has {e1} dollars.")
  _, e2 = s.eq(left, "/", price)
  s.line(f"{she.capitalize()} can buy {e2} {item}.")
  return (f"{who} has {budget} dollars. {she.capitalize()} spends {spent} dollars on lunch and "
          f"uses the rest of {her} money on {item} that cost {price} dollars each. "
          f"How many {item} can {she} buy?")


def _travel_two_legs(d: _Draw, s: _Steps) -> str:
  vehicle = d.pick(("bus", "train", "car", "truck"))
  v1, t1, v2, t2 = d.num(), d.factor(), d.num(), d.factor()
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
  trip = morning + afternoon + d.num()
  done, e1 = s.eq(morning, "+", afternoon)
  s.line(f"They drive {e1} km so far.")
  _, e2 = s.eq(trip, "-", done)
  s.line(f"They still have {e2} km to go.")
  return (f"{people} go on a {trip} km trip. They drive {morning} km in the morning and "
          f"{afternoon} km in the afternoon. How many km are left?")


def _travel_legs_left(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  v1, t1, v2, t2 = d.num(), d.factor(), d.num(), d.factor()
  trip = v1 * t1 + v2 * t2 + d.num()
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
  vehicle = d.pick(("van", "boat", "tractor", "truck"))
  per_day, days, price = d.factor(), d.factor(), d.factor()
  fuel, e1 = s.eq(per_day, "*", days)
  s.line(f"The {vehicle} uses {e1} liters.")
  _, e2 = s.eq(fuel, "*", price)
  s.line(f"The fuel costs {e2} dollars.")
  return (f"A {vehicle} uses {per_day} liters of fuel each day. Fuel costs {price} dollars per "
          f"liter. How much does the fuel cost for {days} days?")


def _share_equally(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  snack = d.pick(_SNACKS)
  friends, each = d.factor(), d.factor()
  total = friends * each
  bought = d.between(1, total - 1)
  had = total - bought
  t, e1 = s.eq(had, "+", bought)
  s.line(f"{who} has {e1} {snack}.")
  _, e2 = s.eq(t, "/", friends)
  s.line(f"Each friend gets {e2} {snack}.")
  return (f"{who} has {had} {snack} and buys {bought} more. {she.capitalize()} shares them "
          f"equally among {friends} friends. How many {snack} does each friend get?")


def _share_leftover(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  boxes, per_box, students, each = d.factor(), d.factor(), d.factor(), d.factor()
  total, e1 = s.eq(boxes, "*", per_box)
  s.line(f"There are {e1} crayons.")
  given, e2 = s.eq(students, "*", each)
  s.line(f"{she.capitalize()} gives away {e2} crayons.")
  _, e3 = s.eq(total, "-", given)
  s.line(f"{e3} crayons are left.")
  return (f"{who} has {boxes} boxes of {per_box} crayons. {she.capitalize()} gives {each} crayons "
          f"to each of {students} students. How many crayons are left?")


def _share_pizza(d: _Draw, s: _Steps) -> str:
  food = d.pick(("pizzas", "pies", "cakes"))
  group = d.pick(("people", "kids", "players", "guests"))
  pizzas, slices, people = d.factor(), d.factor(4), d.factor()
  total, e1 = s.eq(pizzas, "*", slices)
  s.line(f"There are {e1} slices.")
  _, e2 = s.eq(total, "/", people)
  s.line(f"Each one gets {e2} slices.")
  return (f"There are {pizzas} {food} cut into {slices} slices each. {people} {group} share the "
          f"slices equally. How many slices does each of the {group} get?")


def _share_earnings(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _) = d.people(2)
  ha, ra, hb, rb = d.factor(), d.factor(), d.factor(), d.factor()
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
  age, older = d.num(), d.num()
  other, e1 = s.eq(age, "+", older)
  s.line(f"The {sibling} is {e1} years old.")
  _, e2 = s.eq(age, "+", other)
  s.line(f"Together they are {e2} years old.")
  return (f"{who} is {age} years old. {her.capitalize()} {sibling} is {older} years older. "
          f"What is the sum of their ages?")


def _ages_future(d: _Draw, s: _Steps) -> str:
  (who, _, her), = d.people(1)
  parent = d.pick(("father", "mother", "aunt", "uncle"))
  age, times, years = d.factor(), d.between(2, 5), d.num()
  now, e1 = s.eq(age, "*", times)
  s.line(f"The {parent} is {e1} years old now.")
  _, e2 = s.eq(now, "+", years)
  s.line(f"In {years} years the {parent} will be {e2}.")
  return (f"{who} is {age} years old. {her.capitalize()} {parent} is {times} times as old. "
          f"How old will {her} {parent} be in {years} years?")


def _ages_past(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _) = d.people(2)
  years, future, younger = d.num(), d.num(3), d.num()
  now, e1 = s.eq(future, "-", years)
  s.line(f"{a} is {e1} years old now.")
  _, e2 = s.eq(now, "-", younger)
  s.line(f"{b} is {e2} years old.")
  return (f"In {years} years {a} will be {future} years old. {b} is {younger} years younger than "
          f"{a} is now. How old is {b}?")


def _ages_three(d: _Draw, s: _Steps) -> str:
  (a, _, _), (b, _, _), (c, _, _) = d.people(3)
  age, more, fewer = d.num(), d.num(), d.num()
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
  cups, cakes, spare = d.factor(), d.factor(), d.num()
  used, e1 = s.eq(cups, "*", cakes)
  s.line(f"The cakes use {e1} cups.")
  _, e2 = s.eq(used, "+", spare)
  s.line(f"{she.capitalize()} started with {e2} cups.")
  return (f"A cake needs {cups} cups of flour. {who} bakes {cakes} cakes and has {spare} cups of "
          f"flour left. How many cups of flour did {she} start with?")


def _recipe_eggs(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  per_batch, mon, tue = d.factor(), d.factor(), d.factor()
  eggs = per_batch * (mon + tue) + d.num()
  batches, e1 = s.eq(mon, "+", tue)
  s.line(f"{she.capitalize()} bakes {e1} batches.")
  used, e2 = s.eq(batches, "*", per_batch)
  s.line(f"They use {e2} eggs.")
  _, e3 = s.eq(eggs, "-", used)
  s.line(f"{e3} eggs are left.")
  return (f"{who} has {eggs} eggs. A batch of cookies needs {per_batch} eggs. {she.capitalize()} "
          f"bakes {mon} batches on Monday and {tue} batches on Tuesday. How many eggs are left?")


def _recipe_scale(d: _Draw, s: _Steps) -> str:
  dish = d.pick(("soup", "stew", "punch", "sauce"))
  serves, batches, spoons = d.factor(), d.factor(), d.factor()
  people = serves * batches
  n, e1 = s.eq(people, "/", serves)
  s.line(f"The cook makes {e1} batches.")
  _, e2 = s.eq(n, "*", spoons)
  s.line(f"That takes {e2} spoons of sugar.")
  return (f"One batch of {dish} serves {serves} people and needs {spoons} spoons of sugar. A cook "
          f"makes {dish} for {people} people. How many spoons of sugar are needed?")


def _savings_weeks(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  weekly, weeks, spend = d.factor(), d.factor(), d.num()
  saved, e1 = s.eq(weekly, "*", weeks)
  s.line(f"{who} saves {e1} dollars.")
  _, e2 = s.eq(saved, "-", spend)
  s.line(f"{she.capitalize()} has {e2} dollars left.")
  return (f"{who} saves {weekly} dollars each week for {weeks} weeks. Then {she} spends {spend} "
          f"dollars on a game. How many dollars does {she} have left?")


def _savings_goal(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  item = d.pick(("bike", "tent", "guitar", "watch"))
  has, weekly, weeks = d.num(), d.factor(), d.factor()
  price = has + weekly * weeks
  need, e1 = s.eq(price, "-", has)
  s.line(f"{who} still needs {e1} dollars.")
  _, e2 = s.eq(need, "/", weekly)
  s.line(f"That takes {e2} weeks.")
  return (f"A {item} costs {price} dollars. {who} has {has} dollars and saves {weekly} dollars "
          f"each week. How many weeks until {she} can buy the {item}?")


def _savings_allowance(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  earn, spend, weeks = d.num(2), d.num(), d.factor()
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
  rows, per_row, died, added = d.factor(), d.factor(), d.num(), d.num()
  total, e1 = s.eq(rows, "*", per_row)
  s.line(f"At first there are {e1} {plant}.")
  alive, e2 = s.eq(total, "-", died)
  s.line(f"After some die there are {e2}.")
  _, e3 = s.eq(alive, "+", added)
  s.line(f"Now there are {e3} {plant}.")
  return (f"{who} plants {rows} rows of {plant} with {per_row} in each row. {died} of them die and "
          f"{who} plants {added} more. How many {plant} are in {her} garden now?")


def _library_books(d: _Draw, s: _Steps) -> str:
  start, mon, tue, back = d.num(), d.num(), d.num(), d.num()
  left1, e1 = s.eq(start, "-", mon)
  s.line(f"After Monday there are {e1} books.")
  left2, e2 = s.eq(left1, "-", tue)
  s.line(f"After Tuesday there are {e2} books.")
  _, e3 = s.eq(left2, "+", back)
  s.line(f"With the returns there are {e3} books.")
  return (f"A library shelf has {start} books. {mon} books are borrowed on Monday and {tue} on "
          f"Tuesday. Then {back} books are returned. How many books are on the shelf?")


def _class_groups(d: _Draw, s: _Steps) -> str:
  place = d.pick(("school", "camp", "club"))
  classes, per_class, size = d.factor(), d.factor(4), d.factor()
  total = classes * per_class
  absent = total % size or size
  students, e1 = s.eq(classes, "*", per_class)
  s.line(f"There are {e1} students.")
  here, e2 = s.eq(students, "-", absent)
  s.line(f"{e2} students are present.")
  _, e3 = s.eq(here, "/", size)
  s.line(f"They make {e3} groups.")
  return (f"A {place} has {classes} classes with {per_class} students each. {absent} students are "
          f"absent and the rest work in groups of {size}. How many groups are there?")


def _fruit_basket(d: _Draw, s: _Steps) -> str:
  (who, _, her), = d.people(1)
  ate_a, ate_o = d.num(), d.num()
  apples, oranges = ate_a + d.num(), ate_o + d.num()
  left_a, e1 = s.eq(apples, "-", ate_a)
  s.line(f"There are {e1} apples left.")
  left_o, e2 = s.eq(oranges, "-", ate_o)
  s.line(f"There are {e2} oranges left.")
  _, e3 = s.eq(left_a, "+", left_o)
  s.line(f"In all {e3} fruits are left.")
  return (f"A basket has {apples} apples and {oranges} oranges. {who} and {her} friends eat "
          f"{ate_a} apples and {ate_o} oranges. How many fruits are left in the basket?")


def _wheels(d: _Draw, s: _Steps) -> str:
  place = d.pick(("parking lot", "garage", "street", "car park"))
  cars, bikes = d.num(), d.num()
  car_wheels, e1 = s.eq(cars, "*", 4)
  s.line(f"The cars have {e1} wheels.")
  bike_wheels, e2 = s.eq(bikes, "*", 2)
  s.line(f"The bikes have {e2} wheels.")
  _, e3 = s.eq(car_wheels, "+", bike_wheels)
  s.line(f"There are {e3} wheels in all.")
  return (f"A {place} has {cars} cars and {bikes} bikes. Each car has 4 wheels and each bike "
          f"has 2 wheels. How many wheels are there?")


def _sports_points(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  twos, threes = d.factor(), d.factor()
  p2, e1 = s.eq(twos, "*", 2)
  s.line(f"The 2 point shots give {e1} points.")
  p3, e2 = s.eq(threes, "*", 3)
  s.line(f"The 3 point shots give {e2} points.")
  _, e3 = s.eq(p2, "+", p3)
  s.line(f"{she.capitalize()} scores {e3} points.")
  return (f"In a game {who} makes {twos} shots worth 2 points and {threes} shots worth 3 points. "
          f"How many points does {she} score?")


def _hens_eggs(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  hens, per_hen, days = d.factor(), d.factor(), d.factor()
  sold = d.between(1, hens * per_hen * days - 1)
  per_day, e1 = s.eq(hens, "*", per_hen)
  s.line(f"The hens lay {e1} eggs a day.")
  laid, e2 = s.eq(per_day, "*", days)
  s.line(f"In {days} days they lay {e2} eggs.")
  _, e3 = s.eq(laid, "-", sold)
  s.line(f"{who} keeps {e3} eggs.")
  return (f"{who} has {hens} hens. Each hen lays {per_hen} eggs a day. After {days} days "
          f"{she} sells {sold} eggs. How many eggs does {she} keep?")


def _bakery_boxes(d: _Draw, s: _Steps) -> str:
  trays, per_tray, box = d.factor(), d.factor(), d.factor()
  made = trays * per_tray
  boxes = d.between(1, made // box)
  sold = made - boxes * box
  morning = d.between(0, sold)
  afternoon = sold - morning
  if not (morning and afternoon):
    raise _Reject
  baked, e1 = s.eq(trays, "*", per_tray)
  s.line(f"The bakery bakes {e1} muffins.")
  gone, e2 = s.eq(morning, "+", afternoon)
  s.line(f"It sells {e2} muffins.")
  rest, e3 = s.eq(baked, "-", gone)
  s.line(f"{e3} muffins are left.")
  _, e4 = s.eq(rest, "/", box)
  s.line(f"They fill {e4} boxes.")
  return (f"A bakery bakes {trays} trays of {per_tray} muffins. It sells {morning} muffins in the "
          f"morning and {afternoon} in the afternoon. The rest are packed in boxes of {box}. "
          f"How many boxes are filled?")


def _collection_three(d: _Draw, s: _Steps) -> str:
  (a, _, her), = d.people(1)
  things = d.pick(_COLLECTIONS)
  own, times = d.num(), d.between(2, 4)
  fewer = d.between(1, own * times - 1)
  sister, e1 = s.eq(own, "*", times)
  s.line(f"{her.capitalize()} sister has {e1} {things}.")
  brother, e2 = s.eq(sister, "-", fewer)
  s.line(f"{her.capitalize()} brother has {e2} {things}.")
  two, e3 = s.eq(own, "+", sister)
  s.line(f"{a} and {her} sister have {e3} {things}.")
  _, e4 = s.eq(two, "+", brother)
  s.line(f"Together they have {e4} {things}.")
  return (f"{a} has {own} {things}. {her.capitalize()} sister has {times} times as many, and "
          f"{her} brother has {fewer} fewer than the sister. How many {things} do the three have?")


def _bulk_share(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  snack = d.pick(_SNACKS)
  boxes, per_box, bags, per_bag, kids = (d.factor(), d.factor(), d.factor(), d.factor(),
                                         d.factor())
  in_boxes, e1 = s.eq(boxes, "*", per_box)
  s.line(f"The boxes hold {e1} {snack}.")
  in_bags, e2 = s.eq(bags, "*", per_bag)
  s.line(f"The bags hold {e2} {snack}.")
  total, e3 = s.eq(in_boxes, "+", in_bags)
  s.line(f"{she.capitalize()} has {e3} {snack}.")
  _, e4 = s.eq(total, "/", kids)
  s.line(f"Each child gets {e4} {snack}.")
  return (f"{who} buys {boxes} boxes of {per_box} {snack} and {bags} bags of {per_bag} {snack}. "
          f"{she.capitalize()} shares them equally among {kids} children. "
          f"How many {snack} does each child get?")


def _reading_pages(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  per_day, days = d.factor(), d.factor()
  pages = per_day * days + d.num()
  read, e1 = s.eq(per_day, "*", days)
  s.line(f"{who} reads {e1} pages.")
  _, e2 = s.eq(pages, "-", read)
  s.line(f"{she.capitalize()} has {e2} pages left.")
  return (f"A book has {pages} pages. {who} reads {per_day} pages a day for {days} days. "
          f"How many pages are left to read?")


def _water_tank(d: _Draw, s: _Steps) -> str:
  rate, minutes = d.factor(), d.factor()
  used = d.between(1, rate * minutes - 1)
  filled, e1 = s.eq(rate, "*", minutes)
  s.line(f"The tank gets {e1} liters.")
  _, e2 = s.eq(filled, "-", used)
  s.line(f"{e2} liters are left in the tank.")
  return (f"A hose fills an empty tank with {rate} liters of water per minute for {minutes} "
          f"minutes. Then {used} liters are used for the garden. How many liters are left?")


def _marbles_game(d: _Draw, s: _Steps) -> str:
  (who, she, _), = d.people(1)
  things = d.pick(("marbles", "cards", "tokens"))
  had, won = d.num(), d.num()
  lost = d.between(1, had + won - 1)
  after_win, e1 = s.eq(had, "+", won)
  s.line(f"After winning {she} has {e1} {things}.")
  _, e2 = s.eq(after_win, "-", lost)
  s.line(f"After losing {she} has {e2} {things}.")
  return (f"{who} has {had} {things}. {she.capitalize()} wins {won} {things} in the first game and "
          f"loses {lost} in the second. How many {things} does {she} have now?")


TEMPLATES: tuple[Template, ...] = (
    Template("shop_change", 3, _shop_change),
    Template("shop_two_items", 3, _shop_two_items),
    Template("shop_sale", 2, _shop_sale),
    Template("shop_budget", 2, _shop_budget),
    Template("travel_two_legs", 3, _travel_two_legs),
    Template("travel_remaining", 2, _travel_remaining),
    Template("travel_legs_left", 4, _travel_legs_left),
    Template("travel_fuel", 2, _travel_fuel),
    Template("share_equally", 2, _share_equally),
    Template("share_leftover", 3, _share_leftover),
    Template("share_pizza", 2, _share_pizza),
    Template("share_earnings", 4, _share_earnings),
    Template("ages_sum", 2, _ages_sum),
    Template("ages_future", 2, _ages_future),
    Template("ages_past", 2, _ages_past),
    Template("ages_three", 4, _ages_three),
    Template("recipe_flour", 2, _recipe_flour),
    Template("recipe_eggs", 3, _recipe_eggs),
    Template("recipe_scale", 2, _recipe_scale),
    Template("savings_weeks", 2, _savings_weeks),
    Template("savings_goal", 2, _savings_goal),
    Template("savings_allowance", 2, _savings_allowance),
    Template("savings_compare", 3, _savings_compare),
    Template("garden_rows", 3, _garden_rows),
    Template("library_books", 3, _library_books),
    Template("class_groups", 3, _class_groups),
    Template("fruit_basket", 3, _fruit_basket),
    Template("wheels", 3, _wheels),
    Template("sports_points", 3, _sports_points),
    Template("hens_eggs", 3, _hens_eggs),
    Template("bakery_boxes", 4, _bakery_boxes),
    Template("collection_three", 4, _collection_three),
    Template("bulk_share", 4, _bulk_share),
    Template("reading_pages", 2, _reading_pages),
    Template("water_tank", 2, _water_tank),
    Template("marbles_game", 2, _marbles_game),
)
_BY_NAME = {t.name: t for t in TEMPLATES}

# Tries per problem before a template is declared unsatisfiable at a difficulty. Rejections are
# rare at the default difficulty; the bound turns a knob setting that can never work into an error.
_MAX_TRIES = 1000


def make_problem(rng: random.Random, template_id: str | None = None,
                 difficulty: Difficulty = Difficulty()) -> Problem:
  """Draws one problem.

  Args:
    rng: the only source of randomness; only `rng.random()` is called.
    template_id: a name from `TEMPLATES`; None draws a template uniformly among those whose step
      count lies in [difficulty.min_steps, difficulty.max_steps]. A named template ignores the step
      range but not the number bounds.
    difficulty: number and step bounds.
  Returns:
    A `Problem` whose solution ends in `The answer is \\boxed{answer}.`.
  """
  if not isinstance(rng, random.Random):
    raise TypeError(f"make_problem: rng must be a random.Random, got {type(rng).__name__}")
  draw = _Draw(rng, difficulty)
  if template_id is None:
    allowed = [t for t in TEMPLATES if difficulty.min_steps <= t.num_steps <= difficulty.max_steps]
    template = draw.pick(allowed)
  elif template_id in _BY_NAME:
    template = _BY_NAME[template_id]
  else:
    raise ValueError(f"make_problem: unknown template_id {template_id!r}; expected one of "
                     f"{', '.join(_BY_NAME)}")
  for _ in range(_MAX_TRIES):
    steps = _Steps()
    try:
      question = template.build(draw, steps)
    except _Reject:
      continue
    answer = str(steps.result)
    steps.line(f"The answer is \\boxed{{{answer}}}.")
    return Problem(question=question, solution="\n".join(steps.lines), answer=answer,
                   template=template.name)
  raise ValueError(f"make_problem: template {template.name!r} found no valid draw in "
                   f"{_MAX_TRIES} tries at {difficulty}")


def make_splits(seed: int, n_pretrain: int, n_sample: int, n_test: int,
                difficulty: Difficulty = Difficulty()) -> dict[str, list[Problem]]:
  """Draws the demo's three splits, with no question text in more than one place.

  'test' is drawn first, then 'sample', then 'pretrain', each from its own stream seeded by
  (seed, split name), skipping any question already drawn. So 'test' depends only on
  (seed, n_test, difficulty) and 'sample' not on n_pretrain: growing the pretraining set leaves the
  evaluation and sampling problems unchanged.

  Returns:
    {'pretrain': [...], 'sample': [...], 'test': [...]}, each list of the requested length.
  """
  sizes = {"test": n_test, "sample": n_sample, "pretrain": n_pretrain}
  for split, size in sizes.items():
    if size < 0:
      raise ValueError(f"make_splits: n_{split} must be >= 0, got {size}")
  seen: set[str] = set()
  splits: dict[str, list[Problem]] = {}
  for split, size in sizes.items():
    # A str seed is hashed with SHA-512 by random.Random: stable across runs and platforms.
    rng = random.Random(f"lr_jax.demo.world/{seed}/{split}")
    problems: list[Problem] = []
    # Draws are cheap (~1e5/s); a world whose draws repeat more often than not is too small.
    draws = 0
    while len(problems) < size:
      if draws == 2 * size + 1000:
        raise ValueError(f"make_splits: found only {len(problems)} of {size} new '{split}' questions "
                         f"at {difficulty}; loosen the difficulty or ask for fewer problems")
      draws += 1
      problem = make_problem(rng, difficulty=difficulty)
      if problem.question not in seen:
        seen.add(problem.question)
        problems.append(problem)
    splits[split] = problems
  return {split: splits[split] for split in SPLITS}


def gsm8k_record(problem: Problem) -> dict[str, str]:
  """The problem as a GSM8K record: {'question', 'answer': solution + '\\n#### ' + answer}."""
  return {"question": problem.question, "answer": f"{problem.solution}\n#### {problem.answer}"}


def write_jsonl(problems: Iterable[Problem], path: str | os.PathLike) -> None:
  """Writes GSM8K-format JSON Lines (see `gsm8k_record`) atomically (`lr_jax.files`)."""
  write_text_atomic(path, "".join(json.dumps(gsm8k_record(p), ensure_ascii=False) + "\n" for p in problems))
