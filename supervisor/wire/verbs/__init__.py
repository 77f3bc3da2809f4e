"""Every control verb's contract: one module per verb with NAME, `Args` and `Result` (pydantic models).

The parent's handler (supervisor/parent/verbs/<verb>.py) validates requests into `Args` and answers with
`Result`; workers (workers/link.py, `WorkerLink.call`) and agentctl (supervisor/ctl/control_client.py,
`ControlClient.call_verb`) send the same `Args` and validate the reply into the same `Result`, so sender
and receiver cannot drift apart. See docs/architecture.md, "Control protocol".
"""
