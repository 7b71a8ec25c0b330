"""What the rules' fixes are made of: source edits of the user's constructor calls and the
phrases that name the user's code. Shared by every rule; no torch import.
"""
