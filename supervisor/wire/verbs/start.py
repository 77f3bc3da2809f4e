"""`start ID...|--all`: start agents; revives failed ones and clears an operator stop."""

from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList

NAME = "start"
Args = ActionArgs
Result = ActionResultList
