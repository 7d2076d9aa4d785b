"""The evaluation harness: emergent misalignment, code security, jailbreaks, over-refusal and
discernment, as resumable runs with reports. ``conscience eval --help`` lists the commands.

Modules: :mod:`.scoring` (pure maths), :mod:`.judges`, :mod:`.questions`, :mod:`.prompt_files`,
:mod:`.answering`, :mod:`.em`, :mod:`.code_security`, :mod:`.adversarial`,
:mod:`.discernment_eval`, :mod:`.runs`, :mod:`.reports`, :mod:`.cli`.
"""
