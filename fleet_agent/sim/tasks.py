"""Meta-World tasks the simulated fleet knows, with the instruction a person would give."""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red goal with the gripper",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-v3": "press the button",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "plate-slide-v3": "slide the plate into the goal",
    "handle-press-v3": "press the handle down",
    "coffee-button-v3": "press the coffee machine button",
    "door-close-v3": "close the door",
    "sweep-into-v3": "sweep the puck into the hole",
    "lever-pull-v3": "pull the lever up",
}

DEFAULT_TASKS = ("reach-v3", "push-v3")


def instruction_for(task: str) -> str:
    """The natural-language instruction recorded with an episode of `task`."""
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    return task.removesuffix("-v3").replace("-", " ")
