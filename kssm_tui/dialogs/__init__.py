"""Typed modal dialogs (ModalScreen[bool]) for actions that change or delete something."""
