"""What the rules' fixes are made of: source edits of the user's constructor calls, which layers
an edit reaches (``reach``: a line that builds only this layer, or a helper's call), and the
phrases that name the user's code. Shared by every rule; no torch import.
"""
