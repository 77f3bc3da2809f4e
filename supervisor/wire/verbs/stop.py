"""`stop ID...|--all`: stop agents' whole process trees; they stay down until an operator starts them."""

from supervisor.wire.verbs.agent_actions import ActionArgs, ActionResultList

NAME = "stop"
Args = ActionArgs
Result = ActionResultList
