"""`restart ID...|--all`: stop each agent's tree, then start it again."""

from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList

NAME = "restart"
Args = ActionArgs
Result = ActionResultList
